package uffd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"time"
)

// Serving the memory of this same process, the server competes for Ps with the goroutines
// whose faults it serves, and a goroutine waiting in a page fault keeps its P (the scheduler
// sees it running). When every P is held so, the server runs only when the runtime's monitor
// preempts one of them, every 10 ms or so: a 4 KiB fault then costs milliseconds instead of
// microseconds. The server prevents what it can and reports what it sees:
//
//   - Serve refuses a UFFD made by New in this process unless GOMAXPROCS exceeds the number
//     of goroutines that may wait in faults at once (WithFaultingGoroutines, default 1).
//   - While serving, a worker whose wait lasted starveWait or more looks at the scheduler as it
//     resumes: every P busy, a goroutine runnable but without a P, and a thread blocked in a
//     fault on this userfaultfd for every other P is the picture of a server that was starved
//     rather than idle. Each such wait counts in ServerStats.Starved; the third is reported
//     to WithErrorHandler as an error matching ErrStarved (or, without a handler, printed once
//     to standard error).

// starveWait is the shortest wait checked for starvation: well above a wake-up (tens of
// microseconds), well below the runtime monitor's preemption period (10 ms).
const starveWait = 5 * time.Millisecond

// starveReport is the starved wait that is reported. Not the first: a machine short of CPUs can
// keep one wait that long by itself (the threads holding the Ps descheduled by the kernel),
// while a server starved by faulting goroutines is starved at nearly every fault.
const starveReport = 3

// ErrStarved is matched by Serve's refusal to serve this process's memory with too few Ps, and
// by the error WithErrorHandler receives when a worker found itself starved of a P.
var ErrStarved = errors.New("uffd: server starved of Ps")

// WithFaultingGoroutines says how many goroutines of this process may wait in faults on the
// served memory at the same time (default 1). Serve refuses to serve a UFFD made by New in this
// process unless GOMAXPROCS is larger, so that the server always has a P: raise GOMAXPROCS
// (goroutines waiting in a fault use no CPU) or serve from another process. The count is a
// promise the server cannot check; what it sees while serving it reports (ServerStats.Starved).
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

// schedNames are the scheduler metrics checkStarved reads.
var schedNames = [...]string{
	"/sched/gomaxprocs:threads",
	"/sched/goroutines/running:goroutines",
	"/sched/goroutines/runnable:goroutines",
}

// checkStarved looks, after a wait of d that ended with messages, whether the worker was starved
// of a P rather than idle (see above), and reports it.
func (s *Server) checkStarved(w *worker, d time.Duration) {
	if d < starveWait || !s.u.local {
		return
	}
	if w.sched == nil {
		w.sched = make([]metrics.Sample, len(schedNames))
		for i, n := range schedNames {
			w.sched[i].Name = n
		}
	}
	metrics.Read(w.sched)
	var v [len(schedNames)]uint64
	for i := range w.sched {
		if w.sched[i].Value.Kind() != metrics.KindUint64 {
			return // a runtime without these metrics: nothing to tell
		}
		v[i] = w.sched[i].Value.Uint64()
	}
	procs, running, runnable := v[0], v[1], v[2]
	if running < procs || runnable == 0 {
		return
	}
	info, ok := readFdinfo(s.u.Fd())
	if !ok || info.total+1 < procs {
		return
	}
	if s.sstats.starved.Add(1) != starveReport {
		return
	}
	err := fmt.Errorf("%w: faults waited %v for it, all %d Ps held (%d thread(s) blocked in faults); keep faulting goroutines < GOMAXPROCS", ErrStarved, d.Round(time.Millisecond), procs, info.total)
	if s.cfg.onError != nil {
		s.cfg.onError(err)
		return
	}
	fmt.Fprintf(os.Stderr, "%v\n", err)
}
