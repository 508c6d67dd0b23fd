package guard

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/testutil"
)

// The scenarios that end a process run in a re-executed test binary: TestMain runs the helper
// named in helperEnv instead of the tests.
const helperEnv = "MIRRORMEM_GUARD_TEST_HELPER"

// helpers maps a name to a function run in the child process.
var helpers = map[string]func(){}

func TestMain(m *testing.M) {
	testutil.RunHelper(helperEnv, helpers) // helpers never return
	testutil.StartPoller()
	os.Exit(m.Run())
}

// child is a helper process: its stdout reports progress line by line, its stderr is kept.
type child struct {
	cmd    *exec.Cmd
	lines  *bufio.Scanner
	stderr bytes.Buffer
	cancel context.CancelFunc
	done   chan struct{} // closed when Wait has returned
	err    error         // Wait's result, once done is closed
}

// startChild runs helper name with the extra files (fd 3 onwards) and environment given. It is
// killed if it outlives a minute, and at the end of the test.
func startChild(t *testing.T, name string, extra []*os.File, env ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	c := &child{cancel: cancel, done: make(chan struct{})}
	c.cmd = exec.CommandContext(ctx, exe, "-test.run=^$")
	c.cmd.Env = append(os.Environ(), helperEnv+"="+name, goraceNoExitSleep())
	c.cmd.Env = append(c.cmd.Env, env...)
	c.cmd.ExtraFiles = extra
	c.cmd.Stderr = &c.stderr
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.lines = bufio.NewScanner(out)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
		cancel()
	})
	go func() {
		// Wait closes stdout, so lines must be read before it returns: readLine is only called
		// before waitExit is.
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	return c
}

// readLine returns the next line the child writes on its stdout.
func (c *child) readLine(t *testing.T) string {
	t.Helper()
	if !c.lines.Scan() {
		<-c.done
		t.Fatalf("the helper ended without reporting (%v); stderr:\n%s", c.err, c.stderr.String())
	}
	return c.lines.Text()
}

// exited reports whether the child has exited within d.
func (c *child) exited(d time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(d):
		return false
	}
}

// exitCode is the child's exit status, or -1 if it was ended by a signal.
func (c *child) exitCode() int { return c.cmd.ProcessState.ExitCode() }

// goraceNoExitSleep keeps a race-enabled helper from sleeping a second before it exits.
func goraceNoExitSleep() string {
	if v := os.Getenv("GORACE"); v != "" {
		return "GORACE=" + v + " atexit_sleep_ms=0"
	}
	return "GORACE=atexit_sleep_ms=0"
}

// taskState is what /proc says of one thread of a process.
type taskState struct {
	tid     int
	state   string // R, S, D, ...
	syscall string // first field of /proc/.../syscall: the number of the system call it blocks in, -1 outside one, "running"
	wchan   string // the kernel function it sleeps in
}

// tasks reads the state of every thread of process pid.
func tasks(pid int) []taskState {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, _ := os.ReadDir(dir)
	var out []taskState
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ts := taskState{tid: tid}
		if b, err := os.ReadFile(dir + "/" + e.Name() + "/stat"); err == nil {
			// pid (comm) state ...: comm may hold spaces, so split after the last ')'.
			s := string(b)
			if i := strings.LastIndexByte(s, ')'); i >= 0 {
				if f := strings.Fields(s[i+1:]); len(f) > 0 {
					ts.state = f[0]
				}
			}
		}
		if b, err := os.ReadFile(dir + "/" + e.Name() + "/syscall"); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				ts.syscall = f[0]
			}
		}
		if b, err := os.ReadFile(dir + "/" + e.Name() + "/wchan"); err == nil {
			ts.wchan = string(b)
		}
		out = append(out, ts)
	}
	return out
}

// waitFor polls cond every millisecond until it holds or the deadline passes; it reports
// whether it held. It waits for states the kernel reaches by itself (threads blocking in a
// fault or a system call), for which there is nothing to wait on.
func waitFor(deadline time.Duration, cond func() bool) bool {
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(time.Millisecond) // polling, bounded by the deadline
	}
	return true
}

// ppollSyscall is how /proc/.../syscall names ppoll(2) on this architecture.
var ppollSyscall = strconv.Itoa(unix.SYS_PPOLL)

// inPpoll counts the threads of pid blocked in ppoll(2).
func inPpoll(pid int) int {
	n := 0
	for _, ts := range tasks(pid) {
		if ts.syscall == ppollSyscall && ts.state == "S" {
			n++
		}
	}
	return n
}

// inFault counts the threads of pid blocked in a userfaultfd page fault.
func inFault(pid int) int {
	n := 0
	for _, ts := range tasks(pid) {
		if ts.wchan == "handle_userfault" {
			n++
		}
	}
	return n
}
