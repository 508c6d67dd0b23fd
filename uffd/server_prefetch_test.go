package uffd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// fillCounter is an Observer that counts, per page, the fills (Copied, Zeroed) it hears of.
type fillCounter struct {
	fills []atomic.Int32
	page  int64
}

func (c *fillCounter) Faulted(int, int64, PagefaultFlags) {}
func (c *fillCounter) Existed(int, int64)                 {}
func (c *fillCounter) Resolved(view int, off, n int64, how Resolution) {
	if how != Copied && how != Zeroed {
		return
	}
	for p := off / c.page; p < (off+n)/c.page; p++ {
		c.fills[p].Add(1)
	}
}

// checkOnce fails t unless every page was filled exactly once.
func (c *fillCounter) checkOnce(t *testing.T) {
	t.Helper()
	for p := range c.fills {
		if n := c.fills[p].Load(); n != 1 {
			t.Errorf("page %d filled %d times, want exactly once", p, n)
		}
	}
}

// touchAll touches every page of each view in turn, waits for the server to settle, and
// checks that each view holds pattern seed's bytes.
func (r *srvRun) touchAll(t *testing.T, pages int, seed byte, views ...uintptr) {
	t.Helper()
	for i, v := range views {
		srvWait(t, srvTouch(v, seq(0, pages)), fmt.Sprintf("toucher of view %d", i))
	}
	r.settle(t)
	for i, v := range views {
		if err := srvVerify(v, pages*srvPage, seed, false, 0); err != nil {
			t.Errorf("view %d: %v", i, err)
		}
	}
}

// prefetchServer makes a server WithPrefetch and opts that serves two views of pages pages from
// src (see prefetchViews), not started yet; cleanup unmaps the views and closes the UFFD.
func prefetchServer(t *testing.T, pages int, src io.ReaderAt, opts ...ServerOption) (s *Server, a, b uintptr, cleanup func()) {
	t.Helper()
	u, a, b, cleanup := prefetchViews(t, pages)
	s = NewServer(u, append([]ServerOption{WithPrefetch()}, opts...)...)
	if err := s.HandleViews(pages*srvPage, src, a, b); err != nil {
		cleanup()
		t.Fatal(err)
	}
	return s, a, b, cleanup
}

func prefetchViews(t *testing.T, pages int) (u *UFFD, a, b uintptr, cleanup func()) {
	t.Helper()
	avail, err := Available()
	if err != nil {
		t.Fatal(err)
	}
	if avail&FeatureMinorShmem == 0 {
		t.Skip("kernel lacks UFFD_FEATURE_MINOR_SHMEM (5.14+)")
	}
	u = srvUFFD(t, FeatureMissingShmem|FeatureMinorShmem)
	n := pages * srvPage
	a = srvShared(t, n)
	b = srvDup(t, a, n)
	srvRegister(t, u, a, n, ModeMissing|ModeMinor)
	srvRegister(t, u, b, n, ModeMissing|ModeMinor)
	return u, a, b, func() { srvUnmap(t, b, n); srvUnmap(t, a, n); u.Close() }
}

// Prefetch of every page, in a shuffled order of ranges: each page is filled once, mapped in
// the other view too, and touching both views afterwards raises no fault at all.
func TestServerPrefetchAll(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 96
	fc := &fillCounter{fills: make([]atomic.Int32, pages), page: int64(srvPage)}
	s, a, b, cleanup := prefetchServer(t, pages, pattern{seed: 7}, WithObserver(fc))
	defer cleanup()
	run, _ := srvStart(t, s)
	var ranges []PrefetchRange
	for p := 0; p < pages; p += 8 {
		ranges = append(ranges, PrefetchRange{int64(p * srvPage), 8 * int64(srvPage)})
	}
	rand.New(rand.NewSource(1)).Shuffle(len(ranges), func(i, j int) { ranges[i], ranges[j] = ranges[j], ranges[i] })
	st, err := s.Prefetch(context.Background(), a, ranges, PrefetchOptions{InFlight: 3, MaxRange: 16 * srvPage})
	if err != nil {
		t.Fatal(err)
	}
	if st.Filled != pages || st.Mapped != pages || st.Existed != 0 {
		t.Errorf("Prefetch: %+v, want %d pages filled and mapped, none existing", st, pages)
	}
	run.touchAll(t, pages, 7, a, b)
	for _, v := range []uintptr{a, b} {
		if st := statsAt(t, s, v); st.Missing != 0 || st.Minor != 0 {
			t.Errorf("view %#x after prefetch: %d missing, %d minor faults, want none", v, st.Missing, st.Minor)
		}
	}
	srvStopOK(t, run)
	fc.checkOnce(t)
}

// Absurd options cost nothing absurd: a MaxRange of a petabyte and a million reads in flight
// prefetch the pages asked for, with buffers no larger than those reads.
func TestServerPrefetchAbsurdOptions(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 16
	s, a, _, cleanup := prefetchServer(t, pages, pattern{seed: 9})
	defer cleanup()
	run, _ := srvStart(t, s)
	st, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, pages * int64(srvPage)}},
		PrefetchOptions{InFlight: 1 << 20, MaxRange: 1 << 50})
	if err != nil || st.Filled != pages {
		t.Errorf("Prefetch: %+v, %v: want %d pages filled", st, err, pages)
	}
	srvStopOK(t, run)
	if err := srvVerify(a, pages*srvPage, 9, false, 0); err != nil {
		t.Error(err)
	}
}

// A million reads in flight asked over a range of thousands of pages allocate about what the
// reads fetch, not a buffer of the largest read per page of the range.
func TestServerPrefetchAbsurdInFlight(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 4096
	s, a, _, cleanup := prefetchServer(t, pages, pattern{seed: 4})
	defer cleanup()
	run, _ := srvStart(t, s)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	st, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, pages * int64(srvPage)}}, PrefetchOptions{InFlight: 1 << 20})
	runtime.ReadMemStats(&m1)
	if err != nil || st.Filled != pages {
		t.Errorf("Prefetch: %+v, %v: want %d pages filled", st, err, pages)
	}
	// The range is 16 MiB with 4 KiB pages; a buffer of MaxRange per page of it is 4 GiB.
	if got, limit := m1.TotalAlloc-m0.TotalAlloc, uint64(16*pages*srvPage); got > limit {
		t.Errorf("Prefetch of %d bytes allocated %d MiB, more than %d MiB", pages*srvPage, got>>20, limit>>20)
	}
	srvStopOK(t, run)
}

// gatedSource blocks its first read until open is closed, after telling started (with the
// read's offset and length); the reads after it pass.
type gatedSource struct {
	pattern
	started chan [2]int64
	calls   atomic.Int32
	open    chan struct{}
}

func (g *gatedSource) ReadAt(b []byte, off int64) (int, error) {
	if g.calls.Add(1) == 1 {
		g.started <- [2]int64{off, int64(len(b))}
		<-g.open
	}
	return g.pattern.ReadAt(b, off)
}

// A demand fault on a page whose prefetch read is in flight is served at once (it does not
// wait for the prefetch), and the page is filled once: the prefetch meets EEXIST there.
func TestServerPrefetchDemandFirst(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 16
	fc := &fillCounter{fills: make([]atomic.Int32, pages), page: int64(srvPage)}
	src := &gatedSource{pattern: pattern{seed: 9}, started: make(chan [2]int64, 1), open: make(chan struct{})}
	s, a, b, cleanup := prefetchServer(t, pages, src, WithObserver(fc), WithoutFaultAround())
	defer cleanup()
	run, _ := srvStart(t, s)
	done := make(chan PrefetchStats, 1)
	go func() {
		st, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, pages * int64(srvPage)}}, PrefetchOptions{InFlight: 1})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	// The prefetch's first read (of the first page: the window starts with one) blocks; a
	// demand fault on its page reads the page itself, and is served while it blocks.
	read := srvWait(t, src.started, "the prefetch read")
	if read[0] != 0 || read[1] < int64(srvPage) {
		t.Fatalf("the first prefetch read: %d bytes at %d, want the first page", read[1], read[0])
	}
	srvWait(t, srvTouch(b, []int{0}), "demand toucher")
	close(src.open)
	st := srvWait(t, done, "Prefetch")
	if st.Filled != pages-1 || st.Existed != 1 {
		t.Errorf("Prefetch: %+v, want %d pages filled and 1 existing", st, pages-1)
	}
	run.touchAll(t, pages, 9, a, b)
	if st := statsAt(t, s, b); st.Missing != 1 {
		t.Errorf("view B: %d missing faults, want 1 (the demand fault)", st.Missing)
	}
	srvStopOK(t, run)
	fc.checkOnce(t)
}

// logSource logs every read; the first one waits until open is closed, after telling
// started.
type logSource struct {
	pattern
	started chan struct{}
	open    chan struct{}
	mu      sync.Mutex
	reads   [][2]int64 // page, pages
}

func (l *logSource) ReadAt(b []byte, off int64) (int, error) {
	l.mu.Lock()
	l.reads = append(l.reads, [2]int64{off / int64(srvPage), int64(len(b) / srvPage)})
	first := len(l.reads) == 1
	l.mu.Unlock()
	if first {
		close(l.started)
		<-l.open
	}
	return l.pattern.ReadAt(b, off)
}

// A demand fault on a page that the prefetch has yet to read makes it go on past that page,
// then come back for the pages it skipped; a fault outside its ranges does not move it. The
// prefetch's first read (page 0) is held while the program faults on page 20 and on page 40,
// which it does not prefetch; then every page is filled once, and the reads are, in order:
// page 0, the faults' pages 20 and 40, the pages after 20, and the pages it skipped. With
// MaxRange a page, the pages go one read each; with 32 pages, page 20 cuts the range in two.
func TestServerPrefetchFollowsDemand(t *testing.T) {
	for _, maxRange := range []int{1, 32} {
		t.Run(fmt.Sprintf("MaxRange=%dpages", maxRange), func(t *testing.T) {
			defer srvLeakCheck(t)()
			const pages, fetched = 48, 32
			fc := &fillCounter{fills: make([]atomic.Int32, pages), page: int64(srvPage)}
			src := &logSource{pattern: pattern{seed: 5}, started: make(chan struct{}), open: make(chan struct{})}
			s, a, b, cleanup := prefetchServer(t, pages, src, WithObserver(fc), WithoutFaultAround())
			defer cleanup()
			run, _ := srvStart(t, s)
			done := make(chan PrefetchStats, 1)
			go func() {
				// One read in flight: the source is local, so the window goes to the caps
				// after its first round, and the reads go in the order they are taken.
				st, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, fetched * int64(srvPage)}},
					PrefetchOptions{InFlight: 1, MaxRange: maxRange * srvPage})
				if err != nil {
					t.Error(err)
				}
				done <- st
			}()
			srvWait(t, src.started, "the prefetch read")
			srvWait(t, srvTouch(b, []int{20}), "demand toucher, page 20")
			srvWait(t, srvTouch(b, []int{40}), "demand toucher, page 40")
			close(src.open)
			st := srvWait(t, done, "Prefetch")
			if st.Filled != fetched-1 || st.Existed != 0 {
				t.Errorf("Prefetch: %+v, want %d pages filled and none existing", st, fetched-1)
			}
			// The pages read, in order (how many a read takes is the window's business).
			want := []int64{0, 20, 40}
			for p := int64(21); p < fetched; p++ {
				want = append(want, p)
			}
			for p := int64(1); p < 20; p++ {
				want = append(want, p)
			}
			var got []int64
			src.mu.Lock()
			for _, r := range src.reads {
				for p := r[0]; p < r[0]+r[1]; p++ {
					got = append(got, p)
				}
			}
			src.mu.Unlock()
			if !slices.Equal(got, want) {
				t.Errorf("pages read, in order:\n got %v\nwant %v", got, want)
			}
			run.touchAll(t, pages, 5, a, b)
			srvStopOK(t, run)
			fc.checkOnce(t)
		})
	}
}

// A demand fault on the last page left to prefetch takes it from the prefetch, which then
// has nothing left to read and returns.
func TestServerPrefetchDemandTakesTheLastPage(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 4
	src := &logSource{pattern: pattern{seed: 6}, started: make(chan struct{}), open: make(chan struct{})}
	s, a, b, cleanup := prefetchServer(t, pages, src, WithoutFaultAround())
	defer cleanup()
	run, _ := srvStart(t, s)
	done := make(chan PrefetchStats, 1)
	go func() {
		st, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, 2 * int64(srvPage)}}, PrefetchOptions{InFlight: 1})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	srvWait(t, src.started, "the prefetch read")
	srvWait(t, srvTouch(b, []int{1}), "demand toucher")
	close(src.open)
	if st := srvWait(t, done, "Prefetch"); st.Filled != 1 || st.Reads != 1 {
		t.Errorf("Prefetch: %+v, want 1 page filled in 1 read", st)
	}
	run.touchAll(t, pages, 6, a)
	srvStopOK(t, run)
}

// heldSource holds every read until open is closed, after telling started of the first.
type heldSource struct {
	pattern
	started chan struct{}
	once    sync.Once
	open    chan struct{}
}

func (h *heldSource) ReadAt(b []byte, off int64) (int, error) {
	h.once.Do(func() { close(h.started) })
	<-h.open
	return h.pattern.ReadAt(b, off)
}

// A view unhandled while a read of Prefetch is in flight, and its address handled again for
// other objects (as after an unmap and a new mapping at the same address), gets nothing of the
// reads in flight: Prefetch returns ErrViewGone, and every byte there is the new objects'.
func TestServerPrefetchViewReplaced(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 16
	src := &heldSource{pattern: pattern{seed: 9}, started: make(chan struct{}), open: make(chan struct{})}
	s, a, b, cleanup := prefetchServer(t, pages, src, WithoutFaultAround())
	defer cleanup()
	run, _ := srvStart(t, s)
	done := make(chan error, 1)
	go func() {
		_, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, 4 * int64(srvPage)}, {4 * int64(srvPage), 12 * int64(srvPage)}}, PrefetchOptions{InFlight: 2})
		done <- err
	}()
	srvWait(t, src.started, "the prefetch read")
	for _, v := range []uintptr{a, b} {
		if err := s.Unhandle(v, pages*srvPage); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Handle(a, 4*srvPage, pattern{seed: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(a+4*uintptr(srvPage), (pages-4)*srvPage, pattern{seed: 2}); err != nil {
		t.Fatal(err)
	}
	close(src.open)
	if err := srvWait(t, done, "Prefetch"); !errors.Is(err, ErrViewGone) {
		t.Errorf("Prefetch through a replaced view: %v, want ErrViewGone", err)
	}
	if err := srvVerify(a, 4*srvPage, 1, false, 0); err != nil {
		t.Error(err)
	}
	if err := srvVerify(a+4*uintptr(srvPage), (pages-4)*srvPage, 2, false, 0); err != nil {
		t.Error(err)
	}
	srvStopOK(t, run)
}

// A view cut in two while Prefetch runs (its middle unhandled, as an unmap does) keeps its two
// parts: Prefetch fills the pages asked in both, through the part that holds each.
func TestServerPrefetchViewCut(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 16
	src := &heldSource{pattern: pattern{seed: 6}, started: make(chan struct{}), open: make(chan struct{})}
	s, a, _, cleanup := prefetchServer(t, pages, src)
	defer cleanup()
	run, _ := srvStart(t, s)
	done := make(chan PrefetchStats, 1)
	go func() {
		st, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, 4 * int64(srvPage)}, {8 * int64(srvPage), 8 * int64(srvPage)}}, PrefetchOptions{})
		if err != nil {
			t.Error(err)
		}
		done <- st
	}()
	srvWait(t, src.started, "the prefetch read")
	if err := s.Unhandle(a+4*uintptr(srvPage), 4*srvPage); err != nil {
		t.Fatal(err)
	}
	close(src.open)
	if st := srvWait(t, done, "Prefetch"); st.Filled != 12 {
		t.Errorf("Prefetch: %+v, want the 12 pages outside the cut filled", st)
	}
	for _, r := range [][2]int{{0, 4}, {8, 16}} {
		off := int64(r[0] * srvPage)
		if err := srvVerify(a+uintptr(off), (r[1]-r[0])*srvPage, 6, false, off); err != nil {
			t.Error(err)
		}
	}
	srvStopOK(t, run)
}

// notedSource tells reads of every read it makes.
type notedSource struct {
	pattern
	reads chan int64
}

func (n *notedSource) ReadAt(b []byte, off int64) (int, error) {
	n.reads <- off
	return n.pattern.ReadAt(b, off)
}

// Closing the server stops a Prefetch, as it promises (ErrServerClosed), even one that waits
// for its rate (here a page every 68 minutes): no read of the source starts after Close.
func TestServerPrefetchClosed(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 16
	src := &notedSource{pattern: pattern{seed: 3}, reads: make(chan int64, pages)}
	s, a, _, cleanup := prefetchServer(t, pages, src)
	defer cleanup()
	run, _ := srvStart(t, s)
	done := make(chan error, 1)
	go func() {
		_, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, pages * int64(srvPage)}}, PrefetchOptions{InFlight: 1, MaxRange: srvPage, Rate: 1})
		done <- err
	}()
	srvWait(t, src.reads, "the first read")
	srvStopOK(t, run)
	if err := srvWait(t, done, "Prefetch after Close"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Prefetch after Close: %v, want ErrServerClosed", err)
	}
	if n := len(src.reads); n != 0 {
		t.Errorf("%d reads after Close", n)
	}
	if _, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, int64(srvPage)}}, PrefetchOptions{}); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Prefetch on a closed server: %v, want ErrServerClosed", err)
	}
}

// Prefetch and demand faults through both views race on every page: each page is still
// filled exactly once and every byte is the source's.
func TestServerPrefetchRace(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 128
	for round := 0; round < 3; round++ {
		fc := &fillCounter{fills: make([]atomic.Int32, pages), page: int64(srvPage)}
		s, a, b, cleanup := prefetchServer(t, pages, pattern{seed: 5}, WithObserver(fc), WithWorkers(2), WithFaultAround(16*srvPage))
		run, _ := srvStart(t, s)
		r := rand.New(rand.NewSource(int64(round)))
		var ranges []PrefetchRange
		for _, p := range r.Perm(pages) {
			ranges = append(ranges, PrefetchRange{int64(p * srvPage), int64(srvPage)})
		}
		pf := make(chan error, 1)
		go func() {
			_, err := s.Prefetch(context.Background(), a, ranges, PrefetchOptions{InFlight: 4, MaxRange: 4 * srvPage})
			pf <- err
		}()
		var chans []<-chan int
		for g := 0; g < 2; g++ {
			view := a
			if g == 1 {
				view = b
			}
			chans = append(chans, srvTouch(view, r.Perm(pages)))
		}
		for _, c := range chans {
			srvWait(t, c, "racing toucher")
		}
		if err := srvWait(t, pf, "Prefetch"); err != nil {
			t.Fatal(err)
		}
		srvStopOK(t, run)
		for _, v := range []uintptr{a, b} {
			if err := srvVerify(v, pages*srvPage, 5, false, 0); err != nil {
				t.Error(err)
			}
		}
		fc.checkOnce(t)
		cleanup()
	}
}

// Prefetch refuses a server made without WithPrefetch, an address that starts no view, and
// stops when its context is cancelled.
func TestServerPrefetchRefuses(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 8
	u, a, b, cleanup := prefetchViews(t, pages)
	defer cleanup()
	s := NewServer(u)
	if err := s.HandleViews(pages*srvPage, nil, a, b); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prefetch(context.Background(), a, []PrefetchRange{{0, 4096}}, PrefetchOptions{}); !errors.Is(err, ErrNoPrefetch) {
		t.Errorf("without WithPrefetch: %v, want ErrNoPrefetch", err)
	}
	s2 := NewServer(u, WithPrefetch())
	if err := s2.HandleViews(pages*srvPage, nil, a, b); err != nil {
		t.Fatal(err)
	}
	var re *RangeError
	if _, err := s2.Prefetch(context.Background(), a+uintptr(srvPage), nil, PrefetchOptions{}); !errors.As(err, &re) {
		t.Errorf("inside a view: %v, want a *RangeError", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s2.Prefetch(ctx, a, []PrefetchRange{{0, pages * int64(srvPage)}}, PrefetchOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
}

// shortSource returns half of any read longer than a page (whole pages), with err: a source
// whose reads come back short (a network source cut mid-response, a file being written).
type shortSource struct {
	pattern
	err error
}

func (s shortSource) ReadAt(b []byte, off int64) (int, error) {
	if len(b) <= srvPage {
		return s.pattern.ReadAt(b, off)
	}
	n, _ := s.pattern.ReadAt(b[:len(b)/2&^(srvPage-1)], off)
	return n, s.err
}

// A read that comes back short does not end the pages it was for: Prefetch reads the rest
// again, and returns only when every page is filled, as it promises (a push that stopped at
// the short reads would leave half the image to a source that may be gone).
func TestServerPrefetchShortReads(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 64
	for _, err := range []error{nil, errors.New("cut short")} {
		u, a, b, cleanup := prefetchViews(t, pages)
		s := NewServer(u, WithPrefetch())
		if err := s.HandleViews(pages*srvPage, shortSource{pattern{seed: 3}, err}, a, b); err != nil {
			t.Fatal(err)
		}
		run, _ := srvStart(t, s)
		st, perr := s.Prefetch(context.Background(), a, []PrefetchRange{{0, pages * int64(srvPage)}}, PrefetchOptions{MaxRange: 16 * srvPage})
		if perr != nil || st.Filled != pages || st.Mapped != pages || st.Errors != 0 {
			t.Errorf("short reads (error %v): %+v, %v: want all %d pages filled and mapped", err, st, perr, pages)
		}
		for _, v := range []uintptr{a, b} { // pages left unfilled are served on demand
			if err := srvVerify(v, pages*srvPage, 3, false, 0); err != nil {
				t.Error(err)
			}
		}
		srvStopOK(t, run)
		cleanup()
	}
}
