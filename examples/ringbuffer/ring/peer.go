package ring

import (
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// peerCheckEvery is how long a side of a shared ring sleeps on the futex before it looks
// whether the other process is still alive. A process that dies without closing the ring
// cannot wake anyone, so without this look the other side would wait for ever; with it, that
// side learns of the death within this time, at the cost of one wake-up per interval while it
// waits (a poll(2) of a pidfd, a few microseconds).
const peerCheckEvery = 50 * time.Millisecond

// peerWatch watches the other process of a shared ring through a pidfd (pidfd_open(2), Linux
// 5.3), which becomes readable when that process exits. The pidfd is opened the first time a
// wait times out, and again if another process attached since. Both processes must be in the
// same PID namespace (as a child started with exec.Cmd is), because the header records PIDs
// as each process sees its own.
type peerWatch struct {
	mu      sync.Mutex
	creator bool  // this handle made the ring: its peer is the process that attached
	pid     int32 // the process fd refers to
	fd      int   // pidfd, or -1
}

// peerAlive returns an error wrapping ErrPeerGone if the other process of a shared ring has
// exited. It returns nil when it cannot tell (a ring made by New, no process attached yet, a
// kernel without pidfd_open).
func (r *Ring) peerAlive() error {
	if r.mem.hdrReg == nil {
		return nil // made by New: both sides are in this process
	}
	w, h := &r.peer, r.h
	pid := h.creatorPid.Load()
	if w.creator {
		pid = h.attacherPid.Load()
	}
	if pid <= 0 || int(pid) == os.Getpid() {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pid != pid || w.fd < 0 {
		w.closeLocked()
		fd, err := unix.PidfdOpen(int(pid), 0)
		if err == unix.ESRCH {
			return fmt.Errorf("%w (process %d)", ErrPeerGone, pid)
		}
		if err != nil {
			return nil // cannot watch: wait as a ring without this check would
		}
		w.fd, w.pid = fd, pid
	}
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 0); err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0 {
		return fmt.Errorf("%w (process %d)", ErrPeerGone, pid)
	}
	return nil
}

func (w *peerWatch) closeLocked() {
	if w.fd >= 0 {
		unix.Close(w.fd)
		w.fd, w.pid = -1, 0
	}
}

func (w *peerWatch) close() {
	w.mu.Lock()
	w.closeLocked()
	w.mu.Unlock()
}
