package fault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem/memtest"
	"github.com/mirrormem/mirrormem/uffd"
)

// runHelper runs a scenario in a subprocess of the test binary; its exit code and standard
// error are what the calling test checks.
func runHelper(name string) int {
	switch name {
	case "last-handler-dies":
		const n = 4 * pg
		p := newTestPair(panicTB{}, n, uffd.ModeMissing, 0)
		h, err := StartProcess(zeroConfig(p, n), ProcessOptions{NoStandby: true})
		if err != nil {
			panic(err)
		}
		unix.Kill(h.Pids()[0], unix.SIGKILL)
		sum(p.orig) // blocks: the uffd is still open here, so no silent zero page
		os.Stdout.WriteString("the page was served after the handler died\n")
		return 0
	case "parent-dies":
		const n = 4 * pg
		p := newTestPair(panicTB{}, n, uffd.ModeMissing, 0)
		h, err := StartProcess(zeroConfig(p, n), ProcessOptions{})
		if err != nil {
			panic(err)
		}
		fmt.Println(h.Pids()[0], h.Pids()[1])
		os.Stdin.Read(make([]byte, 1)) // until killed
		return 0
	}
	return 99
}

// helperCmd runs a helper scenario, killed if it outlives a minute (a hang fails the test).
func helperCmd(t *testing.T, name string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "FAULT_TEST_HELPER="+name, goraceNoExitSleep())
	return cmd
}

// The handler processes exit when the process they serve dies (their end of its pipe hangs up):
// no orphan keeps serving, or holding the userfaultfd, after its program is gone.
func TestHandlersExitWithServedProcess(t *testing.T) {
	cmd := helperCmd(t, "parent-dies")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var primary, standby int
	if _, err := fmt.Fscan(out, &primary, &standby); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("reading the handler pids: %v", err)
	}
	var pidfds []int
	for _, pid := range []int{primary, standby} {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatalf("pidfd_open(%d): %v", pid, err)
		}
		defer unix.Close(fd)
		pidfds = append(pidfds, fd)
	}
	cmd.Process.Kill()
	cmd.Wait()
	for i, fd := range pidfds {
		if !memtest.Readable(t, fd, 30*time.Second) {
			t.Errorf("handler process %d still runs 30 s after the served process died", []int{primary, standby}[i])
		}
	}
}

// Kernel fact: when the userfaultfd is closed the kernel serves later faults as ordinary faults,
// zero pages, silently. This is what the handlers must never let happen.
func TestClosedUFFDGivesSilentZeros(t *testing.T) {
	const n = 2 * pg
	p := newTestPair(t, n, uffd.ModeMissing, 0)
	p.u.Close()
	p.u = nil
	if sum(p.orig) != 0 {
		t.Fatal("a page of a closed userfaultfd's range is not zero")
	}
}

// The last handler process dying while a thread waits for a page: the program stops loudly.
// The faulting thread is never handed a zero page (the served process keeps its uffd open).
func TestLastHandlerDeathIsLoud(t *testing.T) {
	cmd := helperCmd(t, "last-handler-dies")
	var stderr, stdout bytes.Buffer
	cmd.Stderr, cmd.Stdout = &stderr, &stdout
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("helper: %v, want exit status 2 (the guard ends the program); stderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "every fault handler process of this program died") {
		t.Errorf("stderr does not name the cause:\n%s", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("the faulting thread went on: %s", stdout.String())
	}
}

// The primary handler process dies: the standby takes over and serves the source's bytes.
func TestStandbyTakesOver(t *testing.T) {
	const n = 8 * pg
	f, data := sourceFile(t, n)
	p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
	h, err := StartProcess(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()), SourceLen: n, AliasFD: -1}, ProcessOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Stop()
	sum(p.orig[:pg])
	if err := unix.Kill(h.Pids()[0], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.dup, data) || !bytes.Equal(p.orig, data) {
		t.Fatal("after the takeover the views differ from the source")
	}
	if s := h.Stats(); s.Takeovers != 1 {
		t.Errorf("takeovers %d, want 1", s.Takeovers)
	}
	if err := h.Err(); err != nil {
		t.Errorf("a handler is still serving, yet Err = %v", err)
	}
}

// The only handler dies: OnDeath hears of it, Err says so, and a fault raised meanwhile waits
// (no zero page) until a new handler serves it with the source's bytes.
func TestDeadHandlerNeverYieldsZeros(t *testing.T) {
	const n = 4 * pg
	f, data := sourceFile(t, n)
	p := newTestPair(t, n, uffd.ModeMissing, 0)
	cfg := Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(f.Fd()), SourceLen: n, AliasFD: -1}
	died := make(chan error, 1)
	h, err := StartProcess(cfg, ProcessOptions{NoStandby: true, OnDeath: func(err error) { died <- err }})
	if err != nil {
		t.Fatal(err)
	}
	unix.Kill(h.Pids()[0], unix.SIGKILL)
	derr := <-died
	if derr == nil || h.Err() == nil {
		t.Fatalf("OnDeath(%v), Err() = %v: want the death reported", derr, h.Err())
	}
	h.Stop()
	got := make(chan int)
	go func() { got <- sum(p.orig[pg : 2*pg]) }() // blocks in the fault until served
	h2, err := StartProcess(cfg, ProcessOptions{NoStandby: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Stop()
	if s, want := <-got, sum(data[pg:2*pg]); s != want {
		t.Fatalf("page served after the handler died sums to %d, want the source's %d", s, want)
	}
}

// A source that fails: with UFFDIO_POISON the faulting access raises SIGBUS (a Go panic with
// SetPanicOnFault) instead of blocking forever or reading zeros.
func TestSourceErrorPoisonsThePage(t *testing.T) {
	avail, err := uffd.Available()
	if err != nil || avail&uffd.FeaturePoison == 0 {
		t.Skip("UFFDIO_POISON needs Linux 6.6")
	}
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for _, st := range starters(t) {
		t.Run(st.name, func(t *testing.T) {
			const n = 2 * pg
			p := newTestPair(t, n, uffd.ModeMissing, uffd.FeaturePoison)
			h, err := st.start(Config{UFFD: p.u, Views: p.views(), Len: n, Source: SourceFD, SourceFD: int(dir.Fd()), SourceLen: n, AliasFD: -1, Poison: true})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Stop()
			touch := func(b []byte) (r any) {
				defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
				defer func() { r = recover() }()
				sum(b)
				return nil
			}
			if touch(p.orig[:pg]) == nil {
				t.Fatal("reading a page whose source failed did not fault")
			}
			// The page was poisoned in every view: the other view faults too, at once,
			// without a second read of the source.
			if touch(p.dup[:pg]) == nil {
				t.Fatal("reading the failed page through the other view did not fault")
			}
			if s := h.Stats(); s.Errors != 1 || !strings.Contains(s.Error, unix.EISDIR.Error()) {
				t.Errorf("errors %d %q, want 1 with EISDIR (21): the other view was not poisoned with the first", s.Errors, s.Error)
			}
		})
	}
}
