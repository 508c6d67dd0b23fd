package ring

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Operations of futex(2) (linux/futex.h); x/sys/unix does not name them.
const (
	futexWaitOp = 0 // FUTEX_WAIT
	futexWakeOp = 1 // FUTEX_WAKE
)

// futexWait sleeps while *addr == val, until futexWake on the same word (from any process that
// maps it), a signal, or the timeout; it reports whether the timeout ended the sleep. It uses
// the shared (not FUTEX_PRIVATE_FLAG) futex so that the word can live in memory shared with
// another process. Spurious returns are fine: callers re-check.
func futexWait(addr *atomic.Uint32, val uint32, timeout time.Duration) (timedOut bool) {
	ts := unix.NsecToTimespec(int64(timeout))
	// Syscall6, not RawSyscall6: the thread may sleep for long, and the scheduler must know
	// so that it hands this P to another thread.
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
	return e == unix.ETIMEDOUT
}

// futexWake wakes every sleeper on addr.
func futexWake(addr *atomic.Uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, uintptr(^uint32(0)>>1), 0, 0, 0)
}
