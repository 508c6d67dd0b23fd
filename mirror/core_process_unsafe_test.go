package mirror

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/mirrormem/mirrormem/alloc"
	"golang.org/x/sys/unix"
)

// Tests that need another process re-run this test binary with one of these variables set.
const (
	envFork  = "MIRRORMEM_TEST_FORK"
	envMemfd = "MIRRORMEM_TEST_MEMFD_CHILD"
	envSeal  = "MIRRORMEM_TEST_SEAL"
)

// subprocess runs the named test of this binary in a new process with env set and fails t if
// it fails.
func subprocess(t *testing.T, test string, env []string, extra ...*os.File) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	// The race detector's runtime sleeps a second at exit by default; the child need not.
	cmd.Env = append(cmd.Env, strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.ExtraFiles = extra
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+test) {
		t.Fatalf("%s in a subprocess: %v\n%s", test, err, out)
	}
	t.Logf("subprocess:\n%s", out)
}

// A child made with fork(2) shares every view with its parent: writes through the child's
// mirror appear in the parent's original and the other way round, after the fork. Go cannot
// fork without exec, so the test runs in a subprocess of its own (envFork), which forks with
// the raw system call; the forked child runs only raw system calls (read(2) into its mirror
// view, write(2) from its original view) and exits, as the runtime's own fork+exec path does.
func TestForkSharesMirror(t *testing.T) {
	if os.Getenv(envFork) == "" {
		subprocess(t, "TestForkSharesMirror", []string{envFork + "=1"})
		return
	}
	n := alloc.PageSize()
	_, p, closePair := ringPair(t, n)
	defer closePair()

	fromChild := []byte("written by the child through its mirror")
	fromParent := []byte("written by the parent after the fork")
	var data, toChild, toParent [2]int
	for _, fds := range []*[2]int{&data, &toChild, &toParent} {
		if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
	}
	// Each end is closed exactly once; the parent drops the ends only the child uses right
	// after the fork (and the child the parent's), so either side dying gives the other EOF
	// instead of a hang.
	closeFd := func(fd *int) {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	defer func() {
		for _, fd := range []*int{&data[0], &data[1], &toChild[0], &toChild[1], &toParent[0], &toParent[1]} {
			closeFd(fd)
		}
	}()
	if _, err := unix.Write(data[1], fromChild); err != nil {
		t.Fatal(err)
	}
	const at = 1000 // where the parent writes, through its mirror
	args := forkArgs{
		dataR: uintptr(data[0]), toChildR: uintptr(toChild[0]), toParentW: uintptr(toParent[1]),
		toChildW: uintptr(toChild[1]), toParentR: uintptr(toParent[0]),
		childDst: uintptr(unsafe.Pointer(&p.Mirror()[0])), childLen: uintptr(len(fromChild)),
		parentSrc: uintptr(unsafe.Pointer(&p.Original()[at])), parentLen: uintptr(len(fromParent)),
	}
	pid, errno := forkChild(&args)
	if errno != 0 {
		t.Fatalf("fork: %v", errno)
	}
	closeFd(&toParent[1])
	closeFd(&toChild[0])
	closeFd(&data[0])
	var one [1]byte
	if _, err := unix.Read(toParent[0], one[:]); err != nil || one[0] != 'w' {
		t.Fatalf("waiting for the child: %v %q", err, one)
	}
	if got := string(p.Original()[:len(fromChild)]); got != string(fromChild) {
		t.Fatalf("parent's original after the child wrote its mirror: %q, want %q", got, fromChild)
	}
	copy(p.Mirror()[at:], fromParent)
	if _, err := unix.Write(toChild[1], []byte{'g'}); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(fromParent))
	if _, err := unix.Read(toParent[0], got); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(fromParent) {
		t.Fatalf("child's original after the parent wrote its mirror: %q, want %q", got, fromParent)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(int(pid), &ws, 0, nil); err != nil || ws.ExitStatus() != 0 {
		t.Fatalf("child: %v, status %v", err, ws)
	}
}

type forkArgs struct {
	dataR, toChildR, toParentW uintptr
	toChildW, toParentR        uintptr // the parent's ends, closed in the child
	childDst, childLen         uintptr
	parentSrc, parentLen       uintptr
}

// forkChild forks with signals blocked on a locked thread. In the child it runs only
// forkedChild, which makes raw system calls and exits.
func forkChild(a *forkArgs) (uintptr, syscall.Errno) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	all, old := ^uint64(0), uint64(0)
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&all)), uintptr(unsafe.Pointer(&old)), 8, 0, 0)
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno == 0 && pid == 0 {
		forkedChild(a)
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, unix.SIG_SETMASK, uintptr(unsafe.Pointer(&old)), 0, 8, 0, 0)
	return pid, errno
}

//go:nosplit
//go:norace
func forkedChild(a *forkArgs) {
	var b [1]byte
	status := uintptr(0)
	syscall.RawSyscall(syscall.SYS_CLOSE, a.toChildW, 0, 0)
	syscall.RawSyscall(syscall.SYS_CLOSE, a.toParentR, 0, 0)
	// The kernel writes into the child's mirror view, which must be the parent's pages.
	if n, _, e := syscall.RawSyscall(syscall.SYS_READ, a.dataR, a.childDst, a.childLen); e != 0 || n != a.childLen {
		status = 2
	}
	b[0] = 'w'
	syscall.RawSyscall(syscall.SYS_WRITE, a.toParentW, uintptr(unsafe.Pointer(&b[0])), 1)
	syscall.RawSyscall(syscall.SYS_READ, a.toChildR, uintptr(unsafe.Pointer(&b[0])), 1)
	// Send back what the child's original view holds where the parent wrote its mirror.
	syscall.RawSyscall(syscall.SYS_WRITE, a.toParentW, a.parentSrc, a.parentLen)
	syscall.RawSyscall(syscall.SYS_EXIT_GROUP, status, 0, 0)
}

// Another process maps the same memfd (inherited through exec as fd 3, as it could be received
// over a Unix socket), mirrors it in its own address space, and both see each other's writes.
func TestOtherProcessSharesMemfd(t *testing.T) {
	if os.Getenv(envMemfd) != "" {
		memfdChild(t)
		return
	}
	defer unchanged(t)()
	n := alloc.PageSize()
	r := memfdRegion(t, "across-processes", n, alloc.WithRoom(n))
	p, closePair := mirrored(t, r, Adjacent())
	defer closePair()
	copy(p.Mirror(), "from the parent")
	// The Region owns its fd: hand the child a duplicate, closed here once it is inherited.
	dup, err := unix.FcntlInt(uintptr(r.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "memfd")
	defer f.Close()
	subprocess(t, "TestOtherProcessSharesMemfd", []string{envMemfd + "=1"}, f)
	if got := string(p.Contiguous()[n-4 : n+6]); got != "from child" {
		t.Fatalf("parent reads %q across its ring's wrap, want the child's %q", got, "from child")
	}
}

func memfdChild(t *testing.T) {
	r, err := alloc.FromFD(3, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := Mirror(r, Adjacent(), CloseRegion())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got := string(p.Original()[:15]); got != "from the parent" {
		t.Fatalf("child reads %q, want the parent's write", got)
	}
	n := p.Len()
	copy(p.Contiguous()[n-4:], "from child") // across the end: lands at the start
}

// Where the kernel refuses the duplicate (here a sealed mapping, mseal 6.10+) the default
// backend falls back to mapping the memfd again. Sealed mappings can never be unmapped, so the
// test runs in a subprocess.
func TestFallbackToMemfd(t *testing.T) {
	if os.Getenv(envSeal) == "" {
		subprocess(t, "TestFallbackToMemfd", []string{envSeal + "=1"})
		return
	}
	r := memfdRegion(t, "sealed", alloc.PageSize())
	if _, _, e := syscall.Syscall(unix.SYS_MSEAL, r.Addr(), uintptr(r.Len()), 0); e != 0 {
		if e == syscall.ENOSYS {
			t.Skipf("kernel without mseal (6.10+): %v", e)
		}
		t.Fatalf("mseal: %v", e)
	}
	_, err := Mirror(r, WithBackend(BackendDuplicate))
	if !errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "sealed") {
		t.Fatalf("duplicate of a sealed mapping: %v, want ErrUnsupported wrapping EPERM and saying sealed", err)
	}
	p, err := Mirror(r)
	if err != nil {
		t.Fatal(err)
	}
	if p.Backend() != BackendMemfd {
		t.Fatalf("Backend %v, want the memfd fallback", p.Backend())
	}
	seeEachOther(t, [][]byte{p.Original(), p.Mirror()})
	t.Logf("fallback backend: %v", p.Backend())
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
