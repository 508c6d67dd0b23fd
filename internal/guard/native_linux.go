//go:build linux && (amd64 || arm64)

package guard

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Native reports whether Start makes a real thread outside the Go scheduler on this GOARCH. It
// is true on linux/amd64 and linux/arm64.
const Native = true

// cloneFlags make a thread of this process (shared memory, files, signal handlers, System V
// semaphore undo list, filesystem context) whose tid the kernel stores in the block before clone
// returns (CLONE_PARENT_SETTID) and clears and futex-wakes when the thread exits
// (CLONE_CHILD_CLEARTID).
const cloneFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
	unix.CLONE_THREAD | unix.CLONE_SYSVSEM | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID

// stackSize is the room below the top of the mapping for the thread's stack. The thread pushes
// nothing and takes no signal (every one is blocked), so a page is ample.
const stackSize = 4096

// A Guard is a running guard thread. Its methods are safe for concurrent use.
type Guard struct {
	mem  []byte // the mapping: block, message, stack; not Go memory
	fd   int    // the guard's own duplicate of the watched fd
	stop int    // the eventfd that Stop writes
	tid  int    // the thread's id
	once sync.Once
	err  error
}

// Start starts a guard thread: it waits in poll(2) on fd (POLLIN|POLLHUP|POLLERR) and on an
// internal stop eventfd. If fd fires first (readable, hung up, in error, or no longer open; or
// ppoll itself fails, so that the guard could no longer watch), the thread writes msg to
// standard error (fd 2) and ends the process with exit_group(code). No Go code runs on the way:
// deferred functions and finalizers do not run and nothing buffered is flushed. If the stop
// eventfd is readable too, the thread exits quietly instead. Start returns once the thread
// exists; a hang-up that happened before Start fires it as soon as it first polls.
//
// Start watches a close-on-exec duplicate of fd that it makes itself (fcntl F_DUPFD_CLOEXEC,
// which also validates fd: a negative or closed fd is refused with an error wrapping EBADF), so
// the caller may close fd at any time. The duplicate holds the open file description until Stop:
// watch the read end of a pipe, never an end whose closing someone else waits for.
//
// The thread's stack, poll array, message and exit code live in one mapping of their own. The
// guard lives until Stop or the end of the process, whether or not the *Guard is reachable. On
// error nothing is left behind: no fd, no mapping, no thread; the error names the system call
// that failed.
func Start(fd int, msg string, code int) (*Guard, error) {
	own, stop, err := openFDs(fd)
	if err != nil {
		return nil, err
	}
	page := os.Getpagesize()
	size := (blockSize+len(msg)+page-1)/page*page + stackSize
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_STACK)
	if err != nil {
		closeAll(own, stop)
		return nil, fmt.Errorf("guard: %w", os.NewSyscallError("mmap", err))
	}
	fill(mem, own, stop, msg, code)
	tid, err := spawn(mem)
	if err != nil {
		unix.Munmap(mem)
		closeAll(own, stop)
		return nil, err
	}
	return &Guard{mem: mem, fd: own, stop: stop, tid: tid}, nil
}

// spawn clones the thread, with the calling goroutine locked to its thread so that the signal
// mask the assembly blocks and restores is that of the thread that clones.
func spawn(mem []byte) (int, error) {
	runtime.LockOSThread()
	ret, op := clone(mem)
	runtime.UnlockOSThread()
	if ret < 0 {
		name := "clone"
		if op == opSigprocmask {
			name = "rt_sigprocmask"
		}
		return 0, fmt.Errorf("guard: starting the thread: %w", os.NewSyscallError(name, syscall.Errno(-ret)))
	}
	return int(ret), nil
}

// Stop stops the thread and waits until it has exited, then closes its fds and unmaps its
// stack. It waits on the thread's tid word with FUTEX_WAIT until the kernel clears it (the
// thread no longer uses its stack), and then, on Linux 6.9+, on a pidfd of the thread until the
// kernel has released it (older kernels may list it in /proc/self/task a moment longer). After
// Stop returns nil nothing of the guard remains: no fd, no mapping, no thread.
//
// Stop is idempotent and safe for concurrent calls; every call waits for the first and returns
// its result. If waking the thread fails (which the kernel gives no reason for), Stop returns
// the error and leaves the guard running, since its stack cannot be unmapped under it.
func (g *Guard) Stop() error {
	g.once.Do(func() { g.err = g.halt() })
	return g.err
}

// halt wakes the thread, waits until it is gone and releases what it used.
func (g *Guard) halt() error {
	// A pidfd on the thread (PIDFD_THREAD, Linux 6.9+) reports POLLHUP once the kernel has
	// released the exited thread. The tid word is cleared a little earlier, while the thread
	// still finishes exiting in the kernel (its stack no longer in use, but the task still
	// listed in /proc/self/task); on older kernels Stop returns at that point.
	pidfd, perr := unix.PidfdOpen(g.tid, pidfdThread)
	if perr != nil {
		pidfd = -1
	}
	if err := wake(g.stop); err != nil {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return err
	}
	err := waitExit(g.mem)
	if err == nil && pidfd >= 0 {
		err = waitReleased(pidfd)
	}
	if pidfd >= 0 {
		unix.Close(pidfd)
	}
	if err != nil {
		return err
	}
	err = closeAll(g.fd, g.stop)
	if uerr := unix.Munmap(g.mem); uerr != nil && err == nil {
		err = fmt.Errorf("guard: %w", os.NewSyscallError("munmap", uerr))
	}
	g.mem = nil
	return err
}

// pidfdThread is PIDFD_THREAD (O_EXCL): a pidfd for one thread rather than its thread group.
const pidfdThread = unix.O_EXCL

// waitReleased waits until the thread of pidfd has been released by the kernel: poll then
// reports POLLHUP, which is always reported and needs no events asked for.
func waitReleased(pidfd int) error {
	fds := []unix.PollFd{{Fd: int32(pidfd)}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("guard: waiting for the thread to be released: %w", os.NewSyscallError("poll(pidfd)", err))
		}
		if fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
			return nil
		}
	}
}

// threadID returns the guard thread's id (for tests).
func (g *Guard) threadID() int { return g.tid }
