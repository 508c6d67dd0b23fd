package uffd

import (
	"context"
	"errors"
	"io"
	"testing"
)

// srvFix is the set-up most server tests share: a userfaultfd, and a range of shared pages
// registered on it.
type srvFix struct {
	u     *UFFD
	a     uintptr // the range (a test that moves it sets a to where it went)
	n     int     // its length in bytes (a test that unmaps it sets n to 0)
	pages int
}

// srvFixture opens a userfaultfd with f and opts, maps pages shared pages (none: no range) and
// registers them with m (m 0: not registered). The returned closer unmaps the range, closes the
// userfaultfd and then fails t if the test left a descriptor or a shared mapping behind; defer
// it first, so that it runs after the test's own clean-up.

func srvFixture(t testing.TB, f Feature, pages int, m Mode, opts ...Option) (*srvFix, func()) {
	t.Helper()
	leaks := srvLeakCheck(t)
	u, err := New(append([]Option{WithFeatures(f)}, opts...)...)
	if err != nil {
		leaks()
		t.Fatalf("New(%v): %v", f, err)
	}
	fx := &srvFix{u: u, n: pages * srvPage, pages: pages}

	if pages > 0 {
		fx.a = srvShared(t, fx.n)
	}
	if m != 0 {
		srvRegister(t, fx.u, fx.a, fx.n, m)
	}
	return fx, func() {
		t.Helper()
		if fx.n > 0 {
			srvUnmap(t, fx.a, fx.n)
		}
		fx.u.Close()
		leaks()
	}
}

// server makes a server of fx's userfaultfd with opts that handles the whole range with src.
func (fx *srvFix) server(t testing.TB, src io.ReaderAt, opts ...ServerOption) *Server {
	t.Helper()
	s := NewServer(fx.u, opts...)
	srvHandle(t, s, fx.a, fx.n, src)
	return s
}

// serve is server, then srvStart.
func (fx *srvFix) serve(t testing.TB, src io.ReaderAt, opts ...ServerOption) (*Server, *srvRun) {
	t.Helper()
	s := fx.server(t, src, opts...)
	run, _ := srvStart(t, s)
	return s, run
}

// touchAll touches every page of the range in order and waits for the toucher.
func (fx *srvFix) touchAll(t testing.TB) {
	t.Helper()
	srvWait(t, srvTouch(fx.a, seq(0, fx.pages)), "toucher")
}

// expect fails t unless the whole range holds pattern seed's bytes.
func (fx *srvFix) expect(t testing.TB, seed byte) {
	t.Helper()
	srvExpect(t, fx.a, fx.n, seed, 0)
}

// srvHandle is s.Handle, failing t on an error.
func srvHandle(t testing.TB, s *Server, a uintptr, n int, src io.ReaderAt) {
	t.Helper()
	if err := s.Handle(a, n, src); err != nil {
		t.Fatalf("Handle %#x+%d: %v", a, n, err)
	}
}

// srvExpect fails t unless [a, a+n) holds pattern seed's bytes from offset off.
func srvExpect(t testing.TB, a uintptr, n int, seed byte, off int64) {
	t.Helper()
	if err := srvVerify(a, n, seed, false, off); err != nil {
		t.Error(err)
	}
}

// srvNeed skips t unless the kernel offers every feature of f; what names the feature and the
// kernel that brought it.
func srvNeed(t testing.TB, f Feature, what string) {
	t.Helper()
	avail, err := Available()
	if err != nil {
		t.Fatal(err)
	}
	if avail&f != f {
		t.Skip("kernel lacks " + what)
	}
}

// dup maps the range again at a new address (the mremap duplicate); the caller unmaps it.
func (fx *srvFix) dup(t testing.TB) uintptr {
	t.Helper()
	return srvDup(t, fx.a, fx.n)
}

// register registers each view (of the range's length) with m.
func (fx *srvFix) register(t testing.TB, m Mode, views ...uintptr) {
	t.Helper()
	for _, v := range views {
		srvRegister(t, fx.u, v, fx.n, m)
	}
}

// srvCancelStops fails t unless a Serve of s whose context is cancelled returns
// context.Canceled.
func srvCancelStops(t testing.TB, s *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := make(chan error, 1)
	go func() { c <- s.Serve(ctx) }()
	cancel()
	if err := srvWait(t, c, "Serve after cancel"); !errors.Is(err, context.Canceled) {
		t.Errorf("Serve after cancel: %v", err)
	}
}

// unhandledThenServed runs s, which does not handle the range: the first touch stops Serve with
// ErrUnhandledFault, and once the range is handled with pattern seed a new Serve serves the
// toucher that waited.
func (fx *srvFix) unhandledThenServed(t testing.TB, s *Server, seed byte) {
	t.Helper()
	_, errc := srvStart(t, s)
	touch := srvTouch(fx.a, seq(0, fx.pages))
	if err := srvWait(t, errc, "Serve"); !errors.Is(err, ErrUnhandledFault) {
		t.Fatalf("Serve: %v, want ErrUnhandledFault", err)
	}
	srvHandle(t, s, fx.a, fx.n, pattern{seed: seed})
	stop, _ := srvStart(t, s)
	srvWait(t, touch, "toucher")
	srvStopOK(t, stop)
	fx.expect(t, seed)
}

// srvOne fails t unless the server counted one event of the kind what.
func srvOne(t testing.TB, what string, got uint64) {
	t.Helper()
	if got != 1 {
		t.Errorf("%s %d, want 1", what, got)
	}
}
