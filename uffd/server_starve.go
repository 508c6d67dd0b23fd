package uffd

import (
	"errors"
	"fmt"
	"runtime"
)

// Serving the memory of this same process, the server competes for Ps with the goroutines
// whose faults it serves, and a goroutine waiting in a page fault keeps its P (the scheduler
// sees it running). When every P is held so, the server runs only when the runtime's monitor
// preempts one of them, every 10 ms or so: a 4 KiB fault then costs milliseconds instead of
// microseconds. Serve therefore refuses a UFFD made by New in this process unless GOMAXPROCS
// exceeds the number of goroutines that may wait in faults at once (WithFaultingGoroutines,
// default 1).
//
// The server does not try to detect starvation while serving: from inside the process, a
// server starved by faulting goroutines looks like one starved by busy goroutines or by a
// loaded machine (every P held, a goroutine runnable, threads blocked in faults), and a
// report that is wrong on a loaded machine would be worse than none.

// ErrStarved is matched by Serve's refusal to serve this process's memory with too few Ps.
var ErrStarved = errors.New("uffd: server starved of Ps")

// WithFaultingGoroutines says how many goroutines of this process may wait in faults on the
// served memory at the same time (default 1). Serve refuses to serve a UFFD made by New in this
// process unless GOMAXPROCS is larger, so that the server always has a P: raise GOMAXPROCS
// (goroutines waiting in a fault use no CPU) or serve from another process. The count is a
// promise the server cannot check: keep it.
func WithFaultingGoroutines(n int) ServerOption {
	return func(c *serverConfig) {
		if n > 0 {
			c.faulting = n
		}
	}
}

// checkProcs is Serve's refusal: serving this process's memory needs a P beyond the faulting
// goroutines.
func (s *Server) checkProcs() error {
	if !s.u.local {
		return nil
	}
	n := max(s.cfg.faulting, 1)
	if procs := runtime.GOMAXPROCS(0); procs <= n {
		return fmt.Errorf("%w: serving this process with %d faulting goroutine(s) needs GOMAXPROCS > %d (is %d): raise it or serve from another process", ErrStarved, n, n, procs)
	}
	return nil
}
