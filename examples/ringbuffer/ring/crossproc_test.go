package ring

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

const childEnv = "RING_TEST_CHILD"

// childMain is the consumer process of the two-process tests: it attaches to the ring passed as
// fds 3 (header) and 4 (data) and does what the parent asked in RING_TEST_CHILD.
func childMain() int {
	r, err := Attach(3, 4)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: Attach:", err)
		return 2
	}
	defer r.Close()
	switch mode := os.Getenv(childEnv); {
	case strings.HasPrefix(mode, "stream:"):
		seed, _ := strconv.ParseUint(strings.TrimPrefix(mode, "stream:"), 10, 64)
		w := &checkWriter{dst: &stream{seed: seed}, left: -1}
		n, err := r.WriteTo(w)
		if w.err != nil || err != nil {
			fmt.Fprintln(os.Stderr, "child:", w.err, err)
			return 1
		}
		fmt.Println(n)
		return 0
	case mode == "block":
		fmt.Println("ready")
		_, err := r.ReadSlice() // the parent closes the ring while we wait here
		if errors.Is(err, ErrClosed) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "child: ReadSlice returned", err, "not ErrClosed")
		return 1
	}
	return 3
}

func startChild(t *testing.T, r *Ring, mode string) (*exec.Cmd, io.ReadCloser) {
	t.Helper()
	hf, df, err := r.Files()
	if err != nil {
		t.Fatal(err)
	}
	defer hf.Close()
	defer df.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	cmd.ExtraFiles = []*os.File{hf, df}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, out
}

func TestTwoProcesses(t *testing.T) {
	defer leakcheck.Check(t)()
	r := makeRing(t, "shared", 5*page)
	defer r.Close()
	const seed, total = 99, 8 << 20
	cmd, out := startChild(t, r, fmt.Sprintf("stream:%d", seed))
	src := &stream{seed: seed}
	buf := make([]byte, 3*page+17)
	for sent := 0; sent < total; {
		k := min(len(buf), total-sent)
		src.fill(buf[:k])
		if _, err := r.Write(buf[:k]); err != nil {
			t.Fatal(err)
		}
		sent += k
	}
	r.CloseWrite()
	got, _ := io.ReadAll(out)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("consumer process: %v", err)
	}
	if strings.TrimSpace(string(got)) != strconv.Itoa(total) {
		t.Fatalf("consumer process read %q bytes, want %d", got, total)
	}
}

// TestCloseWakesOtherProcess: Close in this process wakes a consumer blocked in another.
func TestCloseWakesOtherProcess(t *testing.T) {
	defer leakcheck.Check(t)()
	r := makeRing(t, "shared", page)
	cmd, out := startChild(t, r, "block")
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	// The child said it is about to wait; wait until it does (its flag is in shared memory).
	waitUntil(r.readerWaiting)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("blocked consumer process did not get ErrClosed: %v", err)
	}
}

func TestAttachRefusesNonRing(t *testing.T) {
	defer leakcheck.Check(t)()
	f, err := os.CreateTemp(t.TempDir(), "notaring")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(make([]byte, 2*page))
	fd := int(f.Fd())
	if r, err := Attach(fd, fd); err == nil {
		r.Close()
		t.Fatal("Attach of a file that holds no ring header succeeded")
	} else {
		t.Log(err)
	}
}
