//go:build cgo

package fault

import (
	"bytes"
	"runtime"
	"sync"
	"testing"

	"github.com/mirrormem/mirrormem/uffd"
)

func TestNativeServesBothViewsFromFile(t *testing.T) {
	const n = 4 << 20
	p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
	f, data := sourceFile(t, n)
	h, err := StartNative(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()),
		SourceLen: n, AliasFD: -1, MaxAround: 16, LogCap: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Stop()
	// copy() runs runtime assembly: safe, since the handler is not a Go thread. GC in a loop.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
			}
		}
	}()
	buf := make([]byte, 4096)
	for off := 0; off < n; off += 4096 {
		v := p.orig
		if (off/4096)%3 == 1 {
			v = p.dup
		}
		copy(buf, v[off:off+4096])
		if !bytes.Equal(buf, data[off:off+4096]) {
			t.Fatalf("page at %d differs", off)
		}
	}
	close(stop)
	wg.Wait()
	if !bytes.Equal(p.dup, data) || !bytes.Equal(p.orig, data) {
		t.Fatal("views differ from the source")
	}
	s := h.Stats()
	t.Log(h.Report())
	if s.Views[0].Missing == 0 || s.Views[1].Missing == 0 {
		t.Errorf("missing faults per view: %d, %d; want both > 0", s.Views[0].Missing, s.Views[1].Missing)
	}
	if s.Views[0].Minor == 0 && s.Views[1].Minor == 0 {
		t.Errorf("no minor faults, but every page was read through both views")
	}
	if s.Violations != 0 {
		t.Errorf("violations: %s", s.Violation)
	}
	if got := h.FilledPages(); got != n/4096 {
		t.Errorf("filled pages %d, want %d", got, n/4096)
	}
	filled := s.Views[0].Copied + s.Views[1].Copied
	if filled != n/4096 {
		t.Errorf("pages copied %d, want exactly %d (each page once)", filled, n/4096)
	}
}
