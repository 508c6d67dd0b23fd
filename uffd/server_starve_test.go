package uffd

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Serving this process's memory with as many goroutines able to fault as there are Ps is
// refused before anything is served.
func TestServeRefusesTooFewPs(t *testing.T) {
	defer srvLeakCheck(t)()
	u := srvUFFD(t, 0)
	defer u.Close()
	mem := srvMap(t, 4*srvPage, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	defer srvUnmap(t, mem, 4*srvPage)
	srvRegister(t, u, mem, 4*srvPage, ModeMissing)
	procs := runtime.GOMAXPROCS(0)
	s := NewServer(u, WithFaultingGoroutines(procs))
	defer s.Close()
	if err := s.Handle(mem, 4*srvPage, nil); err != nil {
		t.Fatal(err)
	}
	err := s.Serve(nil)
	if !errors.Is(err, ErrStarved) {
		t.Fatalf("Serve with %d faulting goroutines and GOMAXPROCS=%d returned %v, want ErrStarved", procs, procs, err)
	}
	if len(err.Error()) > 160 {
		t.Errorf("message of %d characters, want at most 160: %q", len(err.Error()), err)
	}
	// The refusal left the server usable: with fewer faulting goroutines it serves.
	s2 := NewServer(u, WithFaultingGoroutines(procs-1), WithErrorHandler(func(error) {}))
	if err := s2.Handle(mem, 4*srvPage, nil); err != nil {
		t.Fatal(err)
	}
	if procs > 1 {
		r, _ := srvStart(t, s2)
		srvWait(t, srvTouch(mem, seq(0, 4)), "toucher")
		srvStopOK(t, r)
	}
}

// Two goroutines fault at once on memory served in their own process with GOMAXPROCS=2, the
// case the refusal cannot see (the caller promised one): the server runs only when the runtime
// preempts one of them, and it says so. The goroutines touch pages until it does, or until
// they run out of pages. (Without spinning: a spinning server keeps its P while faults come
// close together, which hides the starvation as long as every spin hits.)
func TestServeReportsStarvation(t *testing.T) {
	defer srvLeakCheck(t)()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	u := srvUFFD(t, 0)
	defer u.Close()
	const pages = 1024 // per goroutine; starved, a page costs up to a preemption period (10 ms)
	mem := srvMap(t, 2*pages*srvPage, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	defer srvUnmap(t, mem, 2*pages*srvPage)
	srvRegister(t, u, mem, 2*pages*srvPage, ModeMissing)
	var mu sync.Mutex
	var reported []error
	var said atomic.Bool
	s := NewServer(u, WithoutFaultAround(), WithoutSpin(), WithErrorHandler(func(err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
		said.Store(true)
	}))
	if err := s.Handle(mem, 2*pages*srvPage, pattern{seed: 3}); err != nil {
		t.Fatal(err)
	}
	r, _ := srvStart(t, s)
	touched := make(chan int, 2)
	var sums [2]int // keeps the loads
	for g := range 2 {
		go func() {
			m := srvMem(mem+uintptr(g*pages*srvPage), pages*srvPage)
			p, sum := 0, 0
			for ; p < pages && !said.Load(); p++ {
				sum += int(m[p*srvPage]) // a plain load: never inside runtime assembly
			}
			sums[g] = sum
			touched <- p
		}()
	}
	n := srvWait(t, touched, "toucher A") + srvWait(t, touched, "toucher B")
	srvStopOK(t, r)
	st := s.ServerStats()
	mu.Lock()
	defer mu.Unlock()
	if st.Starved < starveReport || len(reported) != 1 || !errors.Is(reported[0], ErrStarved) {
		t.Fatalf("after %d pages touched: starved waits %d, reported %v: want the starvation counted and reported once as ErrStarved", n, st.Starved, reported)
	}
	if len(reported[0].Error()) > 160 {
		t.Errorf("report of %d characters, want at most 160: %q", len(reported[0].Error()), reported[0])
	}
	t.Logf("%d pages touched, %d starved waits; reported: %v", n, st.Starved, reported[0])
}
