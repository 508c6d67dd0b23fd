package guard

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

// newPipe returns a pipe whose ends the test closes at its end (closing twice is harmless).
func newPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// taskExists reports whether this process has a thread tid.
func taskExists(tid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

// mapped reports whether any mapping of this process overlaps [lo, hi).
func mapped(t *testing.T, lo, hi uintptr) bool {
	t.Helper()
	s, err := leakcheck.Take()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range s.Maps {
		var a, b uintptr
		if _, err := fmt.Sscanf(l, "%x-%x", &a, &b); err == nil && a < hi && lo < b {
			return true
		}
	}
	return false
}

// sigBlk returns the SigBlk line of thread tid's status.
func sigBlk(t *testing.T, tid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "SigBlk:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no SigBlk in the status of thread %d", tid)
	return ""
}

// allBlocked is SigBlk with every signal blocked: all 64 but SIGKILL (9) and SIGSTOP (19),
// which the kernel never lets a thread block.
const allBlocked = "fffffffffffbfeff"

// Start then Stop: while it runs the guard is a thread of this process, blocked in ppoll with
// every signal blocked, on a mapping of its own; after Stop no fd, no mapping and no thread of
// it remains.
func TestStartStopLeavesNothing(t *testing.T) {
	r, _ := newPipe(t)
	check := leakcheck.Check(t)
	g, err := Start(int(r.Fd()), "unexpected: the guard fired\n", 70)
	if err != nil {
		t.Fatal(err)
	}
	tid := g.threadID()
	lo, hi := g.span()
	if Native {
		if !taskExists(tid) {
			t.Fatalf("thread %d is not a thread of this process", tid)
		}
		if got := sigBlk(t, tid); got != allBlocked {
			t.Errorf("guard thread's blocked signals: %s, want %s", got, allBlocked)
		}
		if !mapped(t, lo, hi) {
			t.Errorf("the guard's mapping %#x-%#x is not in /proc/self/maps", lo, hi)
		}
		if !waitFor(30*time.Second, func() bool {
			return tasksOf(os.Getpid(), tid).syscall == ppollSyscall
		}) {
			t.Errorf("the guard thread is not blocked in ppoll: %+v", tasksOf(os.Getpid(), tid))
		}
	}
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	if Native {
		if taskExists(tid) {
			t.Errorf("thread %d still exists after Stop: %+v", tid, tasksOf(os.Getpid(), tid))
		}
		if mapped(t, lo, hi) {
			t.Errorf("the guard's mapping %#x-%#x is still mapped after Stop", lo, hi)
		}
	}
	check()
}

// tasksOf returns the state of thread tid of process pid (zero if it does not exist).
func tasksOf(pid, tid int) taskState {
	for _, ts := range tasks(pid) {
		if ts.tid == tid {
			return ts
		}
	}
	return taskState{}
}

// Many guards, started and stopped in turn and side by side, leave nothing behind.
func TestStartStopRepeated(t *testing.T) {
	r, _ := newPipe(t)
	check := leakcheck.Check(t)
	var gs []*Guard
	for i := 0; i < 20; i++ {
		g, err := Start(int(r.Fd()), "unexpected: the guard fired\n", 70)
		if err != nil {
			t.Fatal(err)
		}
		gs = append(gs, g)
		if i%2 == 0 { // every other one at once, the rest at the end
			if err := g.Stop(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, g := range gs {
		if err := g.Stop(); err != nil {
			t.Fatal(err)
		}
		if Native && taskExists(g.threadID()) {
			t.Errorf("thread %d still exists after Stop", g.threadID())
		}
	}
	check()
}

// Stop called from many goroutines at once: each waits for the one that stops the thread and
// returns its result; later calls return it too.
func TestStopConcurrent(t *testing.T) {
	r, _ := newPipe(t)
	check := leakcheck.Check(t)
	g, err := Start(int(r.Fd()), "unexpected: the guard fired\n", 70)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = g.Stop()
			if Native && taskExists(g.threadID()) {
				errs[i] = fmt.Errorf("Stop returned with thread %d still there", g.threadID())
			}
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Stop %d: %v", i, err)
		}
	}
	if err := g.Stop(); err != nil {
		t.Errorf("Stop after Stop: %v", err)
	}
	check()
}

// The guard watches a duplicate of the fd: the caller may close its own at once, and the guard
// goes on waiting (were it watching the closed fd, ppoll would report POLLNVAL and the guard
// would end this test binary with exit status 70).
func TestCallerMayCloseFD(t *testing.T) {
	r, _ := newPipe(t)
	check := leakcheck.Check(t)
	g, err := Start(int(r.Fd()), "the guard fired after the caller closed its fd\n", 70)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if Native {
		// Blocked in ppoll after the close: ppoll has looked at its fds since.
		if !waitFor(30*time.Second, func() bool {
			return tasksOf(os.Getpid(), g.threadID()).syscall == ppollSyscall
		}) {
			t.Errorf("the guard thread is not blocked in ppoll: %+v", tasksOf(os.Getpid(), g.threadID()))
		}
	}
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	check()
}

// A negative, closed or never opened fd is refused by Start with an error naming the system
// call and wrapping EBADF; nothing is left behind.
func TestStartBadFD(t *testing.T) {
	r, _ := newPipe(t)
	closed := int(r.Fd())
	r.Close()
	check := leakcheck.Check(t)
	for _, fd := range []int{-1, closed, 1 << 20} {
		g, err := Start(fd, "unexpected: the guard fired\n", 70)
		if err == nil {
			g.Stop()
			t.Fatalf("Start(%d) succeeded", fd)
		}
		if !errors.Is(err, unix.EBADF) || !strings.Contains(err.Error(), "fcntl") || !strings.Contains(err.Error(), fmt.Sprint(fd)) {
			t.Errorf("Start(%d): %v, want an error naming fcntl and the fd, wrapping EBADF", fd, err)
		}
	}
	check()
}

// Start failing after it has duplicated the fd (here eventfd2, out of fds) closes the
// duplicate and names the failing system call.
func TestStartFailureLeavesNothing(t *testing.T) {
	r, _ := newPipe(t)
	check := leakcheck.Check(t)
	// The lowest free fd number h: with the soft limit at h+1 the duplicate takes h and the
	// eventfd finds none.
	h := 0
	for ; ; h++ {
		if _, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", h)); err != nil {
			break
		}
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(h + 1)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	g, err := Start(int(r.Fd()), "unexpected: the guard fired\n", 70)
	if rerr := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); rerr != nil {
		t.Fatal(rerr)
	}
	if err == nil {
		g.Stop()
		t.Fatal("Start succeeded with no fd free for its eventfd")
	}
	if !errors.Is(err, unix.EMFILE) || !strings.Contains(err.Error(), "eventfd2") {
		t.Errorf("Start: %v, want an error naming eventfd2 and wrapping EMFILE", err)
	}
	check()
}
