package ring

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Telling Close that a call runs, cheaply.
//
// Close unmaps the ring, so it must wait for the calls that touch the ring's memory. A call
// sets its side's active flag and then reads closed; Close sets closed and then reads the
// flags: either Close sees the flag and waits, or the call sees closed and backs out. That
// store-then-load on both sides needs a full memory fence on both sides, and a fenced store
// (XCHG on x86-64) costs about 7 ns here, twice per call: more than the rest of a small
// Write. So the fence is made asymmetric, as userspace RCU and Folly do: the calls store their
// flag with a plain store, and Close, which is rare, runs membarrier(2)
// MEMBARRIER_CMD_PRIVATE_EXPEDITED after setting closed, which makes every running thread of
// the process execute a full fence. After it returns, either a call's flag store is visible to
// Close, or that call's later read of closed sees it set. Where membarrier is not available
// (before Linux 4.14, or filtered by seccomp), and under the race detector, which would report
// the deliberate plain accesses, the calls use fenced stores as before.

// activeFlag is 1 while a call of one side runs.
type activeFlag struct{ v uint32 }

var (
	cheapFlagsOnce sync.Once
	cheapFlags     bool // membarrier registered: plain stores suffice
)

const (
	membarrierPrivateExpedited         = 1 << 3 // MEMBARRIER_CMD_PRIVATE_EXPEDITED
	membarrierRegisterPrivateExpedited = 1 << 4 // MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED
)

// setupCheapFlags registers the process for expedited membarrier once (rings call it when made).
func setupCheapFlags() {
	cheapFlagsOnce.Do(func() {
		if raceEnabled {
			return
		}
		_, _, e := unix.Syscall(unix.SYS_MEMBARRIER, membarrierRegisterPrivateExpedited, 0, 0)
		cheapFlags = e == 0
	})
}

func (a *activeFlag) set(v uint32) {
	if cheapFlags {
		a.v = v
		return
	}
	atomic.StoreUint32(&a.v, v)
}

func (a *activeFlag) load() uint32 { return atomic.LoadUint32(&a.v) }

// heavyFence is Close's half of the protocol, after it has set closed: every thread of the
// process executes a full fence before it returns.
func heavyFence() {
	if cheapFlags {
		if _, _, e := unix.Syscall(unix.SYS_MEMBARRIER, membarrierPrivateExpedited, 0, 0); e != 0 {
			// Registered but refused: cannot happen on a kernel that accepted the
			// registration; fail loudly rather than risk unmapping under a running call.
			panic("ring: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): " + e.Error())
		}
	}
}
