package ring

import "sync/atomic"

// A waiter puts one side of the ring to sleep until the other side signals. seq is the side's
// futex word in the header; a waiter that does not need it ignores it.
//
// Protocol (see waitFor): the sleeper takes a token with prepare, sets its waiting flag, checks
// the ring once more, and only then sleeps with the token; the other side publishes its index
// first and then, if the flag is set, clears it and calls wake. Go's atomics are sequentially
// consistent, so either the sleeper's re-check sees the new index or the waker sees the flag;
// and a wake that lands between prepare and sleep makes sleep return at once (a buffered token
// for the channel, a changed word for the futex). No wake-up is lost and none is sent to a
// side that is not waiting.
type waiter interface {
	prepare(seq *atomic.Uint32) uint32
	// sleep reports whether it gave up waiting after peerCheckEvery, so that the caller can
	// check that the other side is still alive.
	sleep(seq *atomic.Uint32, token uint32) (timedOut bool)
	wake(seq *atomic.Uint32)
}

// chanWaiter parks the goroutine in the Go scheduler: the cheapest sleep inside one process.
type chanWaiter chan struct{}

func newChanWaiter() chanWaiter { return make(chanWaiter, 1) }

func (c chanWaiter) prepare(*atomic.Uint32) uint32     { return 0 }
func (c chanWaiter) sleep(*atomic.Uint32, uint32) bool { <-c; return false }
func (c chanWaiter) wake(*atomic.Uint32) {
	select {
	case c <- struct{}{}:
	default: // a token is already pending: the sleeper will see it
	}
}

// futexWaiter sleeps on the header's futex word, which works across processes that map the
// header. The sleeping goroutine holds its thread in futex(2); the scheduler runs other
// goroutines on other threads meanwhile.
type futexWaiter struct{}

func (futexWaiter) prepare(seq *atomic.Uint32) uint32 { return seq.Load() }
func (futexWaiter) sleep(seq *atomic.Uint32, token uint32) bool {
	return futexWait(seq, token, peerCheckEvery)
}
func (futexWaiter) wake(seq *atomic.Uint32) {
	seq.Add(1)
	futexWake(seq)
}
