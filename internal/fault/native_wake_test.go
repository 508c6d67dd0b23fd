package fault

import (
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// Threads blocked on the same page through both views at once all go on, although a handler
// fills the page through one view only and wakes no other view on that path: each blocked
// thread queued its own message, and serving that message (EEXIST then a wake, or a minor
// fault's CONTINUE) wakes it.
func TestSamePageThroughBothViewsWakesEveryone(t *testing.T) {
	for _, st := range starters(t) {
		for _, around := range []int{1, 16} {
			t.Run(st.name+map[bool]string{true: "/around", false: "/4k"}[around > 1], func(t *testing.T) {
				const n = 64 * pg
				f, data := sourceFile(t, n)
				defer checkLeaks(t)()
				p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
				defer p.close()
				h, err := st.start(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()),
					SourceLen: n, AliasFD: -1, MaxAround: around, LogCap: 1 << 12})
				if err != nil {
					t.Fatal(err)
				}
				defer h.Stop()
				// pread(2) into the views: the faults are taken inside the kernel and the
				// threads sleep in them (no Go code touches the pages). Every page is faulted
				// through both views at the same time, by two threads per view.
				errs := make(chan error, 4*n/pg)
				for off := 0; off < n; off += pg {
					var wg sync.WaitGroup
					for _, v := range [][]byte{p.orig, p.dup, p.dup, p.orig} {
						wg.Add(1)
						go func() {
							defer wg.Done()
							_, err := unix.Pread(int(f.Fd()), v[off:off+pg], int64(off))
							errs <- err
						}()
					}
					wg.Wait()
				}
				close(errs)
				for err := range errs {
					if err != nil {
						t.Fatalf("pread into a view: %v", err)
					}
				}
				if sum(p.orig) != sum(data) || sum(p.dup) != sum(data) {
					t.Fatal("the views do not hold the source's bytes")
				}
				s := h.Stats()
				v0, v1 := s.Views[0], s.Views[1]
				t.Logf("missing %d+%d, minor %d+%d, eexist %d+%d", v0.Missing, v1.Missing, v0.Minor, v1.Minor, v0.EEXIST, v1.EEXIST)
				if v0.Minor+v1.Minor+v0.EEXIST+v1.EEXIST == 0 {
					t.Error("no fault found its page filled through the other view: the test raced nothing")
				}
				if s.Violations != 0 {
					t.Errorf("violations: %s", s.Violation)
				}
				if filled := s.Views[0].Copied + s.Views[1].Copied; filled != n/pg {
					t.Errorf("pages copied %d, want exactly %d (each page once)", filled, n/pg)
				}
				if err := h.Stop(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
