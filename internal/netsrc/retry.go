package netsrc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Retry is a source's retry policy: how many times a transient failure is tried again, and
// what interrupts the waits in between.
type Retry struct {
	// Retries is the number of extra attempts after a transient failure.
	Retries int
	// Done is closed by the source's Close, which interrupts a backoff.
	Done <-chan struct{}
	// Closed is the source's ErrClosed: Do wraps it around the last failure if Done is closed.
	Closed error
}

// Do calls try with attempt numbers 1, 2, ... until it succeeds, fails with an error that is
// not transient, has failed Retries+1 times, or Close interrupts the backoff that precedes
// the next attempt. It returns the number of calls made and the last error; if Done is closed
// by then, the error wraps Closed (and says the failure it interrupted).
func (r Retry) Do(try func(attempt int) (transient bool, err error)) (attempts int, err error) {
	for attempt := 1; ; attempt++ {
		transient, err := try(attempt)
		if err == nil {
			return attempt, nil
		}
		if !transient || attempt > r.Retries || !r.wait(attempt) {
			if r.closed() && r.Closed != nil && !errors.Is(err, r.Closed) {
				err = fmt.Errorf("%w (%v)", r.Closed, err)
			}
			return attempt, err
		}
	}
}

// wait sleeps for backoff(k); it returns false if Done is closed, or closes first.
func (r Retry) wait(k int) bool {
	if r.closed() {
		return false // a timer that fired at once must not win over a Close already made
	}
	t := time.NewTimer(backoff(k))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Done:
		return false
	}
}

func (r Retry) closed() bool {
	select {
	case <-r.Done:
		return true
	default:
		return false
	}
}

// backoff is the wait before retry number k (1-based): 10ms·2^(k-1), capped at 500ms, jittered
// down to half, so that the clients of a server that failed do not all come back at once.
func backoff(k int) time.Duration {
	d := 500 * time.Millisecond
	if k <= 6 {
		d = min(d, 10*time.Millisecond<<(k-1))
	}
	return d/2 + rand.N(d/2+1)
}
