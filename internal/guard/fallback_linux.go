//go:build linux && !amd64 && !arm64

package guard

import (
	"fmt"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// Native reports whether Start makes a real thread outside the Go scheduler on this GOARCH. It
// is false here: Start falls back to a goroutine.
const Native = false

// A Guard is a running guard. Its methods are safe for concurrent use.
type Guard struct {
	fd   int           // the guard's own duplicate of the watched fd
	stop int           // the eventfd that Stop writes
	done chan struct{} // closed when the goroutine has returned
	once sync.Once
	err  error
}

// Start starts a guard: it waits in poll(2) on fd (POLLIN|POLLHUP|POLLERR) and on an internal
// stop eventfd. If fd fires first, it writes msg to standard error (fd 2) and ends the process
// with exit_group(code).
//
// On this GOARCH the guard is a goroutine locked to its thread, which is weaker than the native
// thread of linux/amd64 and linux/arm64: when every P is held by goroutines blocked in page
// faults inside runtime assembly, the goroutine sees the hang-up but never gets a P to act on
// it, and the process hangs. fd is duplicated and validated as on the native architectures; on
// error nothing is left behind.
func Start(fd int, msg string, code int) (*Guard, error) {
	own, stop, err := openFDs(fd)
	if err != nil {
		return nil, err
	}
	g := &Guard{fd: own, stop: stop, done: make(chan struct{})}
	go g.watch(msg, code)
	return g, nil
}

func (g *Guard) watch(msg string, code int) {
	defer close(g.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fds := []unix.PollFd{
		{Fd: int32(g.fd), Events: unix.POLLIN | unix.POLLHUP | unix.POLLERR},
		{Fd: int32(g.stop), Events: unix.POLLIN},
	}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err == nil && fds[1].Revents != 0 {
			return
		}
		if err != nil || fds[0].Revents != 0 {
			if err != nil {
				msg = fmt.Sprintf("guard: poll: %v\n%s", err, msg)
			}
			for b := []byte(msg); len(b) > 0; {
				n, err := unix.Write(2, b)
				if err == unix.EINTR {
					continue
				}
				if err != nil || n <= 0 {
					break
				}
				b = b[n:]
			}
			unix.Exit(code)
		}
	}
}

// Stop stops the guard and waits until it has returned, then closes its fds. Idempotent, safe
// for concurrent calls; every call returns the first call's result.
func (g *Guard) Stop() error {
	g.once.Do(func() {
		if g.err = wake(g.stop); g.err != nil {
			return
		}
		<-g.done
		g.err = closeAll(g.fd, g.stop)
	})
	return g.err
}

// threadID is 0: the fallback has no thread of its own (for tests).
func (g *Guard) threadID() int { return 0 }

// span is empty: the fallback has no mapping (for tests).
func (g *Guard) span() (lo, hi uintptr) { return 0, 0 }
