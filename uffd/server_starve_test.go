package uffd

import (
	"errors"
	"runtime"
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
