package mirror

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

// Tests that change process-wide limits or crash on purpose run in a subprocess of their own.
const (
	envSigbus  = "MIRRORMEM_TEST_SIGBUS"
	envMemlock = "MIRRORMEM_TEST_MEMLOCK"
	envAS      = "MIRRORMEM_TEST_RLIMIT_AS"
	envMaps    = "MIRRORMEM_TEST_MAX_MAP_COUNT"
)

// perfRing maps the ring buffer of a software perf event: a MAP_SHARED mapping the kernel
// marks VM_DONTEXPAND.
func perfRing(t *testing.T) []byte {
	t.Helper()
	attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_DUMMY, Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{}))}
	attr.Bits = unix.PerfBitDisabled
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOENT) {
		t.Skipf("kernel without perf events (CONFIG_PERF_EVENTS): %v", err)
	}
	if err != nil {
		t.Fatalf("perf_event_open: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return rawMap(t, 2*alloc.PageSize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED, fd)
}

// A VM_DONTEXPAND (or VM_PFNMAP) mapping cannot be duplicated: EFAULT. Such a mapping from
// user space: the ring buffer of a perf event. Of refuses it with a clear error and leaves
// nothing behind.
func TestKernelDontExpandEFAULT(t *testing.T) {
	ring := perfRing(t)
	n := len(ring)
	if p, err := dup(mem.Ptr(ring), n, unix.MREMAP_MAYMOVE, nil); !errors.Is(err, unix.EFAULT) {
		if err == nil {
			mem.Munmap(p, uintptr(n))
		}
		t.Fatalf("kernel: duplicate of a perf ring buffer (%s): %v, want EFAULT", mapsLine(t, addr(ring)), err)
	}
	done := unchanged(t)
	pair, err := Of(ring)
	done()
	if err == nil {
		pair.Close()
		t.Fatal("library: Of on a VM_DONTEXPAND mapping succeeded")
	}
	t.Logf("library: %v", err)
	if !errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.EFAULT) || !strings.Contains(err.Error(), "VM_DONTEXPAND") {
		t.Fatalf("library: Of on a perf ring buffer: %v, want ErrUnsupported wrapping EFAULT and naming VM_DONTEXPAND", err)
	}
}

// kernelChild runs the named test of this binary in a subprocess with env set and returns its
// output and exit error, for children that are expected to die.
func kernelChild(t *testing.T, test string, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A duplicate larger than its backing object succeeds; touching past the end of the object
// raises SIGBUS (shown in a subprocess, which dies of it). The package refuses such a mirror
// (ErrPastObject) before calling mremap.
func TestKernelPastObjectSIGBUS(t *testing.T) {
	ps := alloc.PageSize()
	child := os.Getenv(envSigbus) != ""
	fd := memfd(t, "past-object", ps)
	b := rawMap(t, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED, fd)
	p, err := dup(mem.Ptr(b), 2*ps, unix.MREMAP_MAYMOVE, nil)
	if err != nil {
		t.Fatalf("kernel: a duplicate twice the size of its 1-page object: %v, want success", err)
	}
	unmapLater(t, p, 2*ps)
	big := mem.Slice(p, 2*ps)
	if child {
		big[0] = 1 // inside the object: fine
		fmt.Println("touching past the end of the object")
		big[ps] = 1 // past it: SIGBUS
		t.Fatal("no SIGBUS touching past the end of the object")
	}
	out, err := kernelChild(t, "TestKernelPastObjectSIGBUS", envSigbus+"=1")
	if err == nil || !strings.Contains(out, "touching past the end") || !strings.Contains(out, "SIGBUS") {
		t.Fatalf("kernel: the child touching past the end of the object should die of SIGBUS: %v\n%s", err, out)
	}
	defer unchanged(t)()
	if pair, err := Of(big); !errors.Is(err, ErrPastObject) || !strings.Contains(err.Error(), "SIGBUS") {
		if err == nil {
			pair.Close()
		}
		t.Fatalf("library: Of on a mapping larger than its object: %v, want ErrPastObject", err)
	}
}

// dropIPCLock removes CAP_IPC_LOCK from the effective capabilities of the calling thread, so
// that RLIMIT_MEMLOCK applies to it (root is otherwise exempt). The caller has locked the
// goroutine to its thread and never unlocks it, so the thread dies with the goroutine.
func dropIPCLock(t *testing.T) {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	data[0].Effective &^= 1 << unix.CAP_IPC_LOCK
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
}

// Duplicating an mlocked mapping beyond RLIMIT_MEMLOCK fails with EAGAIN (without
// CAP_IPC_LOCK); Mirror says the locked-memory limit was exceeded and leaves nothing behind.
func TestKernelMemlockLimitEAGAIN(t *testing.T) {
	if os.Getenv(envMemlock) == "" {
		subprocess(t, "TestKernelMemlockLimitEAGAIN", []string{envMemlock + "=1"})
		return
	}
	ps := alloc.PageSize()
	os.ReadFile("/proc/self/stat") // the first file read starts the runtime's poller (two fds): not ours
	runtime.LockOSThread()         // never unlocked: the thread without CAP_IPC_LOCK ends with the test
	dropIPCLock(t)
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = uint64(3 * ps) // room for the 2 locked source pages, not for 2 more
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_MEMLOCK, &old)
	r := shared(t, 2*ps)
	defer r.Close()
	if err := unix.Mlock(r.Bytes()); err != nil {
		t.Fatalf("mlock of 2 pages under a 3-page limit: %v", err)
	}
	limitRefuses(t, r, "RLIMIT_MEMLOCK (mlocked)", unix.EAGAIN, "RLIMIT_MEMLOCK")
}

// limitRefuses checks, under a limit the caller set, that the kernel refuses to duplicate r
// with want, and that Mirror(r) fails too, matching want and saying says, leaving nothing
// behind.
func limitRefuses(t *testing.T, r *alloc.Region, limit string, want unix.Errno, says string) {
	t.Helper()
	if p, err := dup(mem.Ptr(r.Bytes()), r.Len(), unix.MREMAP_MAYMOVE, nil); !errors.Is(err, want) {
		if err == nil {
			mem.Munmap(p, uintptr(r.Len()))
		}
		t.Fatalf("kernel: a %d-byte duplicate past %s: %v, want %v", r.Len(), limit, err, want)
	}
	// Only fds and shared mappings count here: Mirror without Adjacent reserves nothing, and
	// the C library's malloc arenas (PROT_NONE tails that may lie next to the 1 GiB region)
	// come and go as threads start.
	done, procs := leakcheck.CheckShared(t), noneLeft(t)
	pair, err := Mirror(r)
	done()
	procs()
	if err == nil {
		pair.Close()
		t.Fatalf("library: Mirror past %s succeeded", limit)
	}
	t.Logf("library: %v", err)
	if !errors.Is(err, want) || !strings.Contains(err.Error(), says) {
		t.Fatalf("library: Mirror past %s: %v, want %v saying %q", limit, err, want, says)
	}
}

// vmSize returns the process's address-space size in bytes (VmSize of /proc/self/status).
func vmSize(t *testing.T) uint64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmSize:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmSize in /proc/self/status")
	return 0
}

// A duplicate that would take the process past RLIMIT_AS fails with ENOMEM; Mirror says it
// ran out of address space.
func TestKernelAddressSpaceLimitENOMEM(t *testing.T) {
	if os.Getenv(envAS) == "" {
		subprocess(t, "TestKernelAddressSpaceLimitENOMEM", []string{envAS + "=1"})
		return
	}
	// Untouched shared memory costs address space only. The headroom left under the limit is
	// large, since the race detector's runtime maps shadow memory as the test goes, and an
	// allocation of its that fails is fatal; the duplicate needs four times more.
	const n, headroom = 1 << 30, 256 << 20
	r := shared(t, n)
	defer r.Close()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_AS, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = vmSize(t) + headroom // room for the test's own growth, not for n more
	if err := unix.Setrlimit(unix.RLIMIT_AS, &lim); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_AS, &old)
	limitRefuses(t, r, fmt.Sprintf("RLIMIT_AS (%d MiB left)", headroom>>20), unix.ENOMEM, "address space")
}

// Each view is one mapping, so vm.max_map_count bounds the views a process can hold: the
// kernel says ENOMEM when the count is reached; Mirror with that many views says so and
// leaves nothing behind.
func TestKernelMaxMapCount(t *testing.T) {
	if os.Getenv(envMaps) == "" {
		subprocess(t, "TestKernelMaxMapCount", []string{envMaps + "=1"})
		return
	}
	data, err := os.ReadFile("/proc/sys/vm/max_map_count")
	if err != nil {
		t.Fatal(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	if max > 1<<20 {
		t.Skipf("vm.max_map_count is %d: too many mappings to reach in a unit test", max)
	}
	ps := alloc.PageSize()
	r := shared(t, ps)
	defer r.Close()
	var views []mem.Pointer
	var kerr error
	for len(views) <= max {
		p, err := dup(mem.Ptr(r.Bytes()), ps, unix.MREMAP_MAYMOVE, nil)
		if err != nil {
			kerr = err
			break
		}
		views = append(views, p)
	}
	// Reading /proc/self/maps needs memory, and the runtime can map no more now: free some
	// views first and count them back in.
	const freed = 1024
	for _, p := range views[len(views)-freed:] {
		mem.Munmap(p, uintptr(ps))
	}
	views = views[:len(views)-freed]
	maps, _ := os.ReadFile("/proc/self/maps")
	areas := strings.Count(string(maps), "\n") + freed
	for _, p := range views {
		mem.Munmap(p, uintptr(ps))
	}
	if !errors.Is(kerr, unix.ENOMEM) {
		t.Fatalf("kernel: duplicate number %d: %v, want ENOMEM", len(views)+1, kerr)
	}
	if areas < max-8 || areas > max {
		t.Fatalf("kernel: ENOMEM with %d areas mapped, vm.max_map_count %d", areas, max)
	}
	t.Logf("kernel: ENOMEM after %d duplicates, %d areas, vm.max_map_count %d", len(views), areas, max)
	done := unchanged(t)
	pair, err := Mirror(r, Views(max))
	done()
	if err == nil {
		pair.Close()
		t.Fatalf("library: Mirror with %d views succeeded", max)
	}
	t.Logf("library: %v", err)
	if !errors.Is(err, unix.ENOMEM) || !strings.Contains(err.Error(), "max_map_count") {
		t.Fatalf("library: Mirror with vm.max_map_count views: %v, want ENOMEM naming vm.max_map_count", err)
	}
}

const envSealRaw = "MIRRORMEM_TEST_SEAL_RAW"

// A sealed mapping (mseal, 6.10+) cannot be duplicated: EPERM. With BackendDuplicate, Of says
// it is sealed; by default it falls back to mapping the object again where it can open it.
// Sealed mappings can never be unmapped, so this runs in a subprocess.
func TestKernelSealedEPERM(t *testing.T) {
	if os.Getenv(envSealRaw) == "" {
		subprocess(t, "TestKernelSealedEPERM", []string{envSealRaw + "=1"})
		return
	}
	n := 2 * alloc.PageSize()
	p, err := mem.Mmap(nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, e := unix.Syscall(unix.SYS_MSEAL, mem.Addr(p), uintptr(n), 0); e != 0 {
		if e == unix.ENOSYS {
			t.Skipf("kernel without mseal (6.10+): %v", e)
		}
		t.Fatalf("mseal: %v", e)
	}
	b := mem.Slice(p, n)
	if q, err := dup(p, n, unix.MREMAP_MAYMOVE, nil); !errors.Is(err, unix.EPERM) {
		if err == nil {
			mem.Munmap(q, uintptr(n))
		}
		t.Fatalf("kernel: duplicate of a sealed mapping: %v, want EPERM", err)
	}
	os.ReadFile("/proc/self/stat") // starts the runtime's poller (two fds) before the leak check
	done := unchanged(t)
	pair, err := Of(b, WithBackend(BackendDuplicate))
	done()
	if err == nil {
		pair.Close()
		t.Fatal("library: Of(sealed, BackendDuplicate) succeeded")
	}
	if !errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "sealed") {
		t.Fatalf("library: Of(sealed, BackendDuplicate): %v, want ErrUnsupported wrapping EPERM, saying sealed", err)
	}
	pair, err = Of(b)
	if err != nil {
		t.Logf("library: Of(sealed) with the default backend: %v", err)
		if !errors.Is(err, unix.EPERM) {
			t.Fatalf("library: Of(sealed): %v, want the fallback or EPERM", err)
		}
		return
	}
	t.Logf("library: Of(sealed) fell back to %v", pair.Backend())
	sharesPages(t, pair.Original(), pair.Mirror())
	pair.Close()
}
