package uffd

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"github.com/mirrormem/mirrormem/internal/testutil"
)

// The package's tests re-execute the test binary to run code in another process: a process that
// serves faults for this one, one that dies of SIGBUS, one that runs as an unprivileged user, one
// that forks. TestMain runs the helper named in helperEnv instead of the tests.
const helperEnv = "MIRRORMEM_UFFD_TEST_HELPER"

// helpers maps a name to a function run in the child; its result is the exit code. Test files
// add theirs in init functions.
var helpers = map[string]func() int{}

// TestMain runs a helper when asked to, and otherwise the tests, failing the run if any of them
// left a file descriptor or a shared mapping behind.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" && runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2) // see needFreeP
	}
	testutil.RunHelper(helperEnv, helpers)
	testutil.StartPoller()
	before, err := leakcheck.Take()

	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if after, err := leakcheck.Take(); err == nil {
		if d := runtimeFiltered(leakcheck.Diff(before, after, false)); d != "" {
			fmt.Fprintf(os.Stderr, "the tests leaked:\n%s\n", d)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// runtimeFiltered drops the PROT_NONE private anonymous reservations the Go runtime makes as
// its heap grows; this package never makes such mappings.
func runtimeFiltered(diff string) string {
	var keep []string
	for _, l := range strings.Split(diff, "\n") {
		f := strings.Fields(l)
		if len(f) == 7 && f[0] == "new" && f[1] == "mapping" && f[3] == "---p" && f[6] == "0" {
			continue
		}
		if l != "" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// needFreeP makes sure GOMAXPROCS is at least 2 while the test runs. A goroutine blocked in a
// user-mode fault keeps its P; with a single P, an in-process handler only runs when that
// goroutine is preempted, which withdraws its unread fault: the test would starve. Tests whose
// toucher is a plain Go loop served in this process call it.
func needFreeP(t testing.TB) {
	freeP.Lock()
	if freeP.users == 0 {
		freeP.prev = runtime.GOMAXPROCS(0)
		if freeP.prev < 2 {
			runtime.GOMAXPROCS(2)
		}
	}
	freeP.users++
	freeP.Unlock()
	t.Cleanup(func() {
		freeP.Lock()
		freeP.users--
		if freeP.users == 0 && freeP.prev < 2 {
			runtime.GOMAXPROCS(freeP.prev)
		}
		freeP.Unlock()
	})
}

var freeP struct {
	sync.Mutex
	users, prev int
}

// helperCmd returns a command that runs helper name in a new process of this test binary.
func helperCmd(t testing.TB, name string, env ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+name)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// runHelper runs helper name to completion and returns its combined output; the test fails if
// it exits with an error.
func runHelper(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper %s: %v\n%s", cmd.Env[len(cmd.Env)-1], err, out)
	}
	return string(out)
}

// unprivilegedCmd is helperCmd for a child that runs as uid/gid 65534 with no capabilities. The
// test binary is copied where that user can execute it (the build directory is private).
func unprivilegedCmd(t testing.TB, name string, env ...string) *exec.Cmd {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("dropping to another uid needs root; the test is written for a root test run")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "uffd-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "uffd.test")
	if err := copyFile(dst, exe); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dst, "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = append([]string{"HOME=" + dir, "PATH=/usr/bin:/bin"}, env...)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "GORACE=") || strings.HasPrefix(kv, "GOTRACEBACK=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, helperEnv+"="+name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// check is the helpers' assertion: it prints a failure and remembers it.
type check struct{ failed bool }

func (c *check) fail(format string, args ...any) {
	c.failed = true
	fmt.Printf("FAIL: "+format+"\n", args...)
}

func (c *check) pass(what string) { fmt.Printf("PASS: %s\n", what) }

func (c *check) code() int {
	if c.failed {
		return 1
	}
	return 0
}
