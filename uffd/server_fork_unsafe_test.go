package uffd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// rawForkExit forks; the child exits at once, running no Go code beyond this function.
//
//go:norace
//go:nosplit
func rawForkExit() (uintptr, unix.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_FORK, 0, 0, 0)
	if r == 0 && e == 0 {
		unix.RawSyscall(unix.SYS_EXIT_GROUP, 0, 0, 0)
	}
	return r, e
}

func init() {
	helpers["server-remote"] = helperServeRemote
}

// helperServeRemote serves the memory of its parent: the userfaultfd arrives as fd 3, the range
// in SRV_ADDR and SRV_LEN. It serves until stdin closes, then prints its counters.
func helperServeRemote() int {
	u, err := FromFD(3)
	if err != nil {
		fmt.Println("FromFD:", err)
		return 1
	}
	defer u.Close()
	addr, _ := strconv.ParseUint(os.Getenv("SRV_ADDR"), 0, 64)
	length, _ := strconv.Atoi(os.Getenv("SRV_LEN"))
	var children []string
	s := NewServer(u, WithForkHandler(func(c *UFFD) {
		children = append(children, c.Features().String())
		c.Close()
	}))
	if err := s.Handle(uintptr(addr), length, pattern{seed: 50}); err != nil {
		fmt.Println("Handle:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	if err := s.Serve(ctx); err != context.Canceled {
		fmt.Println("Serve:", err)
		return 1
	}
	st := s.Stats()[0]
	fmt.Printf("forks=%d missing=%d children=%s\n", s.ServerStats().Forks, st.Missing, strings.Join(children, ","))
	return 0
}

// A server in another process serves this process's memory (UFFDIO_COPY works on the
// registering process's memory, whoever calls it), and gets the fork event when this process
// forks (fork(2) waits until the event is read: the server being elsewhere, this process's
// garbage collector can never stop it meanwhile). The child's userfaultfd goes to
// WithForkHandler.
func TestServerRemoteAndFork(t *testing.T) {
	const pages = 8
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventFork, pages, ModeMissing)
	defer done()
	u, a, n := fx.u, fx.a, fx.n
	cmd := helperCmd(t, "server-remote", fmt.Sprintf("SRV_ADDR=%#x", a), fmt.Sprintf("SRV_LEN=%d", n))
	cmd.ExtraFiles = []*os.File{u.File()}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Served from the other process: when this returns, the helper is serving.
	srvWait(t, srvTouch(a, seq(0, pages)), "toucher served by the helper")
	pid, errno := rawForkExit()
	if errno != 0 {
		t.Errorf("fork: %v", errno)
	} else {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(int(pid), &ws, 0, nil); err != nil {
			t.Error(err)
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	fx.expect(t, 50)
	got := strings.TrimSpace(out.String())
	if !strings.HasPrefix(got, "forks=1 missing=") || !strings.Contains(got, "children=") || strings.HasSuffix(got, "children=") {
		t.Errorf("helper reported %q, want one fork handed to the handler", got)
	}
}
