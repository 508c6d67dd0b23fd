package fault

import (
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/uffd"
)

// Every handler reports its CPU time; the C thread spins while faults come close together and
// stops spinning once the views sit idle (its spin counters settle).
func TestHandlerCPUAndIdleSpin(t *testing.T) {
	for _, st := range starters(t) {
		t.Run(st.name, func(t *testing.T) {
			const n = 2 << 20
			defer checkLeaks(t)()
			p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
			defer p.close()
			h, err := st.start(Config{UFFD: p.u, Views: p.views(), Len: n, AliasFD: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Stop()
			if s := sum(p.orig); s != 0 {
				t.Fatalf("zero-filled view sums to %d", s)
			}
			cpu, err := h.CPUTime()
			if err != nil || cpu <= 0 {
				t.Fatalf("CPUTime after %d faults: %v, %v; want some CPU time", n/4096, cpu, err)
			}
			if st.name != "native" {
				return // the engine counts its spins in its own uffd.ServerStats
			}
			hits, misses := h.SpinStats()
			stable := 0
			for i := 0; i < 200 && stable < 3; i++ {
				time.Sleep(10 * time.Millisecond) // the idle time under test, not synchronisation
				h2, m2 := h.SpinStats()
				if h2 == hits && m2 == misses {
					stable++
				} else {
					stable = 0
				}
				hits, misses = h2, m2
			}
			if stable < 3 {
				t.Fatalf("the C thread's spin counters still moved after 2 s of idle views: %d hits, %d misses", hits, misses)
			}
			t.Logf("CPU %v for %d faults; spin hits %d, misses %d", cpu, n/4096, hits, misses)
		})
	}
}
