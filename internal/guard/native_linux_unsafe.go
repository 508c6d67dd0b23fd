//go:build linux && (amd64 || arm64)

package guard

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pollFd is struct pollfd.
type pollFd struct {
	fd      int32
	events  int16
	revents int16
}

// block is the start of the guard's mapping: everything the thread reads or writes, besides its
// stack and the message that follows the block. The assembly reaches the fields through the
// offsets in go_asm.h.
type block struct {
	fds    [2]pollFd // the watched fd, then the stop eventfd
	tid    int32     // the thread's id; the kernel clears it and futex-wakes when the thread exits
	code   int32     // the exit code
	msgLen uint64    // the length of the message, which starts at msgOff
	sigAll uint64    // every signal: the mask the thread starts with
	sigOld uint64    // the cloning thread's mask, restored right after clone
}

// Offsets used by the assembly.
const (
	blockSize     = int(unsafe.Sizeof(block{}))
	msgOff        = unsafe.Sizeof(block{})
	fdRevents     = unsafe.Offsetof(block{}.fds) + unsafe.Offsetof(pollFd{}.revents)
	stopRevents   = fdRevents + unsafe.Sizeof(pollFd{})
	opSigprocmask = 1 // rawClone's op: blocking the signals failed
	opClone       = 2 // rawClone's op: clone failed (ret < 0), or the tid (ret > 0)
	futexWait     = 0 // FUTEX_WAIT
)

// rawClone blocks every signal on the calling thread, clones a thread running on the stack
// whose top is stack with the block at blk, and restores the calling thread's signal mask. It
// returns the new thread's id, or a negated errno and the step that failed (opSigprocmask or
// opClone). The new thread runs only the assembly after the clone and never returns.
//
//go:noescape
func rawClone(flags, blk, stack uintptr) (ret int64, op uintptr)

// blockOf returns the block at the start of mem.
func blockOf(mem []byte) *block { return (*block)(unsafe.Pointer(&mem[0])) }

// fill writes what the thread needs into mem: the poll array, the exit code, the message and
// the signal masks. The thread does not exist yet, so no ordering is needed.
func fill(mem []byte, fd, stop int, msg string, code int) {
	b := blockOf(mem)
	b.fds[0] = pollFd{fd: int32(fd), events: unix.POLLIN | unix.POLLHUP | unix.POLLERR}
	b.fds[1] = pollFd{fd: int32(stop), events: unix.POLLIN}
	b.code = int32(code)
	b.msgLen = uint64(len(msg))
	b.sigAll = ^uint64(0)
	copy(mem[msgOff:], msg)
}

// clone starts the thread on the mapping mem; see rawClone.
func clone(mem []byte) (ret int64, op uintptr) {
	base := uintptr(unsafe.Pointer(&mem[0]))
	top := (base + uintptr(len(mem))) &^ 15
	return rawClone(cloneFlags, base, top)
}

// waitExit waits until the kernel has cleared the thread's tid word, which it does when the
// thread has exited and will never touch the mapping again.
func waitExit(mem []byte) error {
	word := &blockOf(mem).tid
	for {
		v := atomic.LoadInt32(word)
		if v == 0 {
			return nil
		}
		// Not FUTEX_PRIVATE_FLAG: the kernel's wake on thread exit is a shared-futex wake.
		_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(word)), futexWait, uintptr(uint32(v)), 0, 0, 0)
		switch e {
		case 0, unix.EAGAIN, unix.EINTR:
		default:
			return fmt.Errorf("guard: waiting for the thread to exit: %w", os.NewSyscallError("futex(FUTEX_WAIT)", e))
		}
	}
}

// span returns the address range of the guard's mapping (for tests); zero after Stop.
func (g *Guard) span() (lo, hi uintptr) {
	if g.mem == nil {
		return 0, 0
	}
	lo = uintptr(unsafe.Pointer(&g.mem[0]))
	return lo, lo + uintptr(len(g.mem))
}
