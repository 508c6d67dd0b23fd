package guard

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// The helper's exit code when its guard fires.
const firedCode = 42

// Environment of the "watch" helper.
const (
	envWatcher = "GUARD_TEST_WATCHER" // "guard": Start; "goroutine": goroutineWatcher
	envFault   = "GUARD_TEST_FAULT"   // "1": hold every P with a goroutine blocked in a page fault
	envMsgLen  = "GUARD_TEST_MSGLEN"  // the message's length; a short default
)

// message is the guard's message for a length ("" for the default): lines of text, so that a
// truncated or doubled part shows.
func message(length string) string {
	n, _ := strconv.Atoi(length)
	if n == 0 {
		return "guard test: every handler process died\n"
	}
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %d of the guard's message\n", i)
	}
	return b.String()[:n]
}

// keep holds the helper's userfaultfd: it must stay open, or the kernel serves the blocked
// faults with zero pages.
var keep *uffd.UFFD

func init() {
	// watch watches fd 3, the read end of a pipe whose write end only the parent holds, with a
	// guard or a goroutine, and then waits forever; with envFault it first makes every P
	// unavailable: GOMAXPROCS goroutines each block in a page fault inside copy() on memory
	// registered with a userfaultfd that nobody reads. It reports "ready N" on stdout, N being
	// the number of faulting goroutines it starts.
	helpers["watch"] = func() {
		debug.SetGCPercent(-1) // a collection would stop the world for good once one goroutine is blocked
		msg := message(os.Getenv(envMsgLen))
		switch os.Getenv(envWatcher) {
		case "guard":
			if _, err := Start(3, msg, firedCode); err != nil {
				fmt.Println("Start:", err)
				os.Exit(4)
			}
		case "goroutine":
			go goroutineWatcher(3, msg, firedCode)
		default:
			os.Exit(5)
		}
		// The watcher must be waiting before the Ps go: a goroutine that has not run by then
		// never will.
		if !waitFor(30*time.Second, func() bool { return inPpoll(os.Getpid()) >= 1 }) {
			fmt.Println("the watcher never blocked in ppoll")
			os.Exit(6)
		}
		n := 0
		if os.Getenv(envFault) == "1" {
			n = runtime.GOMAXPROCS(0)
		}
		pg := os.Getpagesize()
		var mem []byte
		if n > 0 {
			var err error
			mem, err = unix.Mmap(-1, 0, n*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err == nil {
				keep, err = uffd.New()
			}
			if err == nil {
				err = keep.Register(uffd.AddrOf(mem), len(mem), uffd.ModeMissing)
			}
			if err != nil {
				fmt.Println("userfaultfd setup:", err)
				os.Exit(7)
			}
		}
		fmt.Println("ready", n)
		for i := range n {
			go func() {
				dst := make([]byte, pg)
				copy(dst, mem[i*pg:(i+1)*pg]) // runtime.memmove faults; nobody serves it
				fmt.Println("a fault was served")
				os.Exit(8)
			}()
		}
		for {
			unix.Pause() // a system call: holds no P, and the runtime sees no deadlock
		}
	}
}

// goroutineWatcher is the guard done with a goroutine, for the control case: ppoll on fd,
// then the message and exit_group(code).
func goroutineWatcher(fd int, msg string, code int) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLHUP | unix.POLLERR}}
	for {
		if _, err := unix.Ppoll(fds, nil, nil); err != unix.EINTR {
			break
		}
	}
	os.Stderr.WriteString(msg)
	unix.Exit(code)
}

// startWatch starts the "watch" helper with the read end of a new pipe and waits until it is
// set up: its watcher blocked in ppoll and, with fault set, every P held by a goroutine
// blocked in a page fault. It returns the helper, the message it was given and the write end
// of the pipe, which only this process holds.
func startWatch(t *testing.T, watcher string, fault bool, msgLen int, gomaxprocs int) (*child, string, *os.File) {
	t.Helper()
	r, w := newPipe(t)
	env := []string{envWatcher + "=" + watcher, fmt.Sprintf("GOMAXPROCS=%d", gomaxprocs), fmt.Sprintf("%s=%d", envMsgLen, msgLen)}
	if fault {
		env = append(env, envFault+"=1")
	}
	c := startChild(t, "watch", []*os.File{r}, env...)
	r.Close() // the helper holds the only read end
	line := c.readLine(t)
	var n int
	if _, err := fmt.Sscanf(line, "ready %d", &n); err != nil {
		t.Fatalf("helper: %q; stderr:\n%s", line, c.stderr.String())
	}
	if fault && n != gomaxprocs {
		t.Fatalf("helper starts %d faulting goroutines, want GOMAXPROCS = %d", n, gomaxprocs)
	}
	pid := c.cmd.Process.Pid
	if !waitFor(30*time.Second, func() bool { return inFault(pid) == n && inPpoll(pid) >= 1 }) {
		t.Fatalf("after 30 s the helper has %d threads blocked in a fault (want %d) and %d in ppoll (want 1): %+v",
			inFault(pid), n, inPpoll(pid), tasks(pid))
	}
	select {
	case <-c.done:
		t.Fatalf("the helper exited before the hang-up: %v; stderr:\n%s", c.err, c.stderr.String())
	default:
	}
	return c, message(strconv.Itoa(msgLen)), w
}

// checkFired checks that the helper ended, within 30 s, with the guard's exit code and exactly
// its message on standard error.
func checkFired(t *testing.T, c *child, msg string) {
	t.Helper()
	if !c.exited(30 * time.Second) {
		t.Fatalf("the helper still runs 30 s after the hang-up: %+v", tasks(c.cmd.Process.Pid))
	}
	if code := c.exitCode(); code != firedCode {
		t.Errorf("exit status %d (%v), want %d", code, c.err, firedCode)
	}
	if got := c.stderr.String(); got != msg {
		if len(got) > 2000 {
			got = got[:1000] + "\n...\n" + got[len(got)-1000:]
		}
		t.Errorf("stderr is not the message (%d bytes, want %d):\n%s", len(c.stderr.String()), len(msg), got)
	}
}

// The pipe hangs up: the guard writes its message and ends the process with its code. A long
// message is written whole, in as many writes as the pipe to the parent takes.
func TestHangupEndsProcess(t *testing.T) {
	for _, msgLen := range []int{0, 1 << 18} {
		t.Run(fmt.Sprint("msglen=", msgLen), func(t *testing.T) {
			c, msg, w := startWatch(t, "guard", false, msgLen, 2)
			w.Close()
			checkFired(t, c, msg)
		})
	}
}

// The fd becomes readable (a handler wrote to the pipe): that fires the guard too.
func TestReadableEndsProcess(t *testing.T) {
	c, msg, w := startWatch(t, "guard", false, 0, 2)
	if _, err := w.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	checkFired(t, c, msg)
}

// The key case: every P of the helper is held by a goroutine blocked in a page fault inside
// copy(), so no goroutine of it can run; the guard thread, outside the scheduler, still ends
// it when the pipe hangs up.
func TestHangupEndsProcessWithEveryPBlocked(t *testing.T) {
	if !Native {
		t.Skip("no native guard thread on " + runtime.GOARCH + ": the fallback goroutine cannot act here (see TestGoroutineWatcherCannotActWithEveryPBlocked)")
	}
	for _, procs := range []int{1, 2, 4} {
		t.Run(fmt.Sprint("GOMAXPROCS=", procs), func(t *testing.T) {
			c, msg, w := startWatch(t, "guard", true, 0, procs)
			w.Close()
			checkFired(t, c, msg)
		})
	}
}

// The control case, which shows the key test can fail: the same helper watching with a
// goroutine. The goroutine wakes from ppoll on the hang-up but never gets a P to act on it,
// and the helper does not exit.
func TestGoroutineWatcherCannotActWithEveryPBlocked(t *testing.T) {
	c, _, w := startWatch(t, "goroutine", true, 0, 2)
	w.Close()
	pid := c.cmd.Process.Pid
	// The watcher's thread leaves ppoll (the hang-up reached it) ...
	if !waitFor(30*time.Second, func() bool { return inPpoll(pid) == 0 }) {
		t.Fatalf("the watcher's thread never left ppoll: %+v", tasks(pid))
	}
	// ... and the helper goes on. Were the goroutine able to run it would exit within
	// microseconds; a quarter of a second is ample to see that it does not.
	if c.exited(250 * time.Millisecond) {
		t.Fatalf("the helper exited (%v): a goroutine acted with every P held; stderr:\n%s", c.err, c.stderr.String())
	}
	// The faulting goroutines are still there (a thread leaves its fault for a moment whenever
	// the runtime's preemption signal interrupts it, so this too is waited for).
	if !waitFor(30*time.Second, func() bool { return inFault(pid) == 2 }) {
		t.Errorf("%d threads blocked in a fault, want 2: %+v", inFault(pid), tasks(pid))
	}
	c.cmd.Process.Kill()
	<-c.done
	if strings.Contains(c.stderr.String(), message("")) {
		t.Errorf("the watcher's message was written:\n%s", c.stderr.String())
	}
}
