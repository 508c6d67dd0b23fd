package uffd

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The spin policy: armed by a short blocked wait, a budget of twice the recent wait within
// [spinMin, spinCap], disarmed by a miss, and not armed again by a long wait.
func TestSpinPolicy(t *testing.T) {
	var sp spinner
	if b := sp.budget(); b != 0 {
		t.Fatalf("a fresh spinner spins %v, want 0", b)
	}
	sp.waited(30*time.Microsecond, false) // a short blocked wait arms it
	if b := sp.budget(); b != spinCap {
		t.Fatalf("after a 30 us wait: budget %v, want %v (2x, capped)", b, spinCap)
	}
	sp.waited(4*time.Microsecond, true)
	sp.waited(4*time.Microsecond, true)
	sp.waited(4*time.Microsecond, true)
	if b := sp.budget(); b < spinMin || b > 2*spinCap/4 {
		t.Fatalf("after hits at 4 us: budget %v, want it to shrink towards max(2x4 us, %v)", b, spinMin)
	}
	sp.waited(time.Nanosecond, true)
	for range 20 {
		sp.waited(0, true)
	}
	if b := sp.budget(); b != spinMin {
		t.Fatalf("after immediate hits: budget %v, want the floor %v", b, spinMin)
	}
	sp.armed = false // what spinRead does after a miss
	if b := sp.budget(); b != 0 {
		t.Fatalf("after a miss: budget %v, want 0", b)
	}
	sp.waited(spinRearm+time.Microsecond, false)
	if b := sp.budget(); b != 0 {
		t.Fatalf("after a long blocked wait: budget %v, want 0", b)
	}
	sp.waited(spinRearm-time.Microsecond, false)
	if b := sp.budget(); b != spinCap {
		t.Fatalf("after a blocked wait just under %v: budget %v, want %v", spinRearm, b, spinCap)
	}
}

// A server spins while faults come close together and stops spinning once they stop: its spin
// counters settle while the memory sits idle, with direct reads and in the poller.
func TestSpinStopsWhenIdle(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ServerOption
	}{{"poller", nil}, {"direct", []ServerOption{WithDirectReads()}}} {
		t.Run(tc.name, func(t *testing.T) {
			defer srvLeakCheck(t)()
			u := srvUFFD(t, 0)
			defer u.Close()
			const pages = 256
			mem := srvMap(t, pages*srvPage, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			defer srvUnmap(t, mem, pages*srvPage)
			srvRegister(t, u, mem, pages*srvPage, ModeMissing)
			s := NewServer(u, append([]ServerOption{WithoutFaultAround()}, tc.opts...)...)
			if err := s.Handle(mem, pages*srvPage, pattern{seed: 5}); err != nil {
				t.Fatal(err)
			}
			r, _ := srvStart(t, s)
			srvWait(t, srvTouch(mem, seq(0, pages)), "toucher")
			// Idle now. A spin armed by the last faults ends within spinCap of its start;
			// after it the worker blocks, and nothing counts any more.
			var last ServerStats
			stable := 0
			for i := 0; i < 200 && stable < 3; i++ {
				time.Sleep(10 * time.Millisecond) // the idle time under test, not synchronisation
				st := s.ServerStats()
				if st.SpinHits == last.SpinHits && st.SpinMisses == last.SpinMisses {
					stable++
				} else {
					stable = 0
				}
				last = st
			}
			srvStopOK(t, r)
			if stable < 3 {
				t.Fatalf("the spin counters still moved after 2 s of idle memory: %+v", last)
			}
			if err := srvVerify(mem, pages*srvPage, 5, false, 0); err != nil {
				t.Error(err)
			}
			t.Logf("spin hits %d, misses %d for %d faults", last.SpinHits, last.SpinMisses, pages)
		})
	}
}
