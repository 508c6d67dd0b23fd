package ring

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Operations of futex(2) (linux/futex.h); x/sys/unix does not name them.
const (
	futexWaitOp = 0 // FUTEX_WAIT
	futexWakeOp = 1 // FUTEX_WAKE
)

// futexWait sleeps while *addr == val, until futexWake on the same word (from any process that
// maps it) or a signal. It uses the shared (not FUTEX_PRIVATE_FLAG) futex so that the word can
// live in memory shared with another process. Spurious returns are fine: callers re-check.
func futexWait(addr *atomic.Uint32, val uint32) {
	// Syscall6, not RawSyscall6: the thread may sleep for long, and the scheduler must know
	// so that it hands this P to another thread.
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp, uintptr(val), 0, 0, 0)
}

// futexWake wakes every sleeper on addr.
func futexWake(addr *atomic.Uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, uintptr(^uint32(0)>>1), 0, 0, 0)
}
