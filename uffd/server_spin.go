package uffd

import (
	"time"

	"golang.org/x/sys/unix"
)

// The adaptive spin before a worker blocks.
//
// A handler that blocks in the kernel and is woken on another CPU pays for that CPU's wake-up
// from idle; on a virtual machine that costs more than serving a 4 KiB fault. So a worker that
// has just served a fault first polls the userfaultfd without blocking (poll(2) with a zero
// timeout), as a futex-based mutex spins before it sleeps, but only while
// faults come close together:
//
//   - the budget is twice the recent wait from "ready" to "message in hand", at least
//     spinMin and never more than spinCap;
//   - a spin that ends without a message disarms the spin: the next wait blocks at once;
//   - a blocked wait re-arms it only if it was shorter than spinRearm, the wake-up included.
//
// A program that stops faulting therefore costs at most one spin of spinCap, then nothing: an
// idle server uses no CPU. Only one worker spins at a time. The C thread of internal/fault
// (native.c) applies the same policy with the same constants.
const (
	spinCap   = 50 * time.Microsecond
	spinMin   = 5 * time.Microsecond
	spinRearm = 100 * time.Microsecond
)

// WithoutSpin makes the workers block as soon as no fault is pending, never spinning: for a
// program whose CPUs are too busy to lend one a few microseconds per fault. Faults then cost a
// wake-up of the blocked worker each.
func WithoutSpin() ServerOption { return func(c *serverConfig) { c.noSpin = true } }

// spinner is one worker's spin state.
type spinner struct {
	gap   time.Duration // recent wait from ready to a message
	armed bool
}

func (sp *spinner) budget() time.Duration {
	if !sp.armed {
		return 0
	}
	return min(max(2*sp.gap, spinMin), spinCap)
}

// waited records a wait of d from ready to a message in hand: found while spinning (hit), or
// after blocking.
func (sp *spinner) waited(d time.Duration, hit bool) {
	if hit {
		sp.gap = (sp.gap + d) / 2
		return
	}
	sp.armed = d < spinRearm
	if sp.armed {
		sp.gap = min(d, spinCap)
	}
}

// spinRead polls the userfaultfd for messages without blocking, for the worker's spin budget
// from t0. It returns the messages read (0: none, the caller blocks).
func (s *Server) spinRead(w *worker, t0 time.Time) (int, error) {
	budget := w.spin.budget()
	if budget == 0 || s.cfg.noSpin || !s.spinning.CompareAndSwap(false, true) {
		return 0, nil
	}
	defer s.spinning.Store(false)
	// poll(2) with no timeout, then a read only of what is there: a read on a userfaultfd that
	// someone made blocking would block (the caller's wait sees POLLERR and repairs that).
	pfd := [1]unix.PollFd{{Fd: int32(s.u.Fd()), Events: unix.POLLIN}}
	for !s.stopping.Load() {
		if k, err := unix.Poll(pfd[:], 0); err == nil && k > 0 {
			if pfd[0].Revents&unix.POLLIN == 0 {
				return 0, nil // POLLERR or POLLNVAL: the caller's wait deals with it
			}
			n, _, err := s.tryRead(w.msgs)
			if n > 0 || err != nil {
				if n > 0 {
					s.sstats.spinHits.Add(1)
					w.spin.waited(time.Since(t0), true)
				}
				return n, err
			}
		}
		if time.Since(t0) >= budget {
			break
		}
	}
	s.sstats.spinMisses.Add(1)
	w.spin.armed = false
	return 0, nil
}

// readPolled reads messages for a worker that waits in the runtime's poller: after a spin,
// if one is due.
func (s *Server) readPolled(w *worker) (int, error) {
	t0 := time.Now()
	if n, err := s.spinRead(w, t0); n > 0 || err != nil {
		return n, err
	}
	var n int
	err := s.u.waitReadable(func() (read int, err error) {
		n, read, err = s.tryRead(w.msgs)
		return read, err
	})
	if n > 0 {
		d := time.Since(t0)
		w.spin.waited(d, false)
	}
	return n, err
}
