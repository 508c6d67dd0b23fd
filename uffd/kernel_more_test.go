package uffd

// More rows of the kernel's behaviour on shared memory, each checked against the running kernel.

import (
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// FALLOC_FL_PUNCH_HOLE frees the page from the shmem object: the MISSING fault fires again
// (and, unlike MADV_REMOVE, no REMOVE event comes first).
func TestPunchHoleRefiresMissing(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures|FeatureEventRemove))
	fd, err := unix.MemfdCreate("uffd-punch", unix.MFD_CLOEXEC)
	mustNil(t, err, "memfd")
	defer unix.Close(fd)
	mustNil(t, unix.Ftruncate(fd, int64(pg)), "ftruncate")
	m, err := unix.Mmap(fd, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	mustNil(t, err, "mmap")
	defer unix.Munmap(m)
	mustNil(t, u.Register(addr(m), pg, ModeMissing), "register")

	done := populate(m, false)
	if msg := readOne(t, u); msg.Event() != EventPagefault || msg.Address() != addr(m) {
		t.Fatalf("first touch: %v", &msg)
	}
	_, err = u.CopyAll(addr(m), page(3), 0)
	mustNil(t, err, "copy")
	mustNil(t, waitT(t, done, "populate"), "populate")
	mustNil(t, waitT(t, populate(m, false), "touching a filled page"), "populate")
	noMsg(t, u)

	mustNil(t, unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, int64(pg)), "punch hole")
	noMsg(t, u) // no REMOVE event for a hole punched with fallocate
	done = populate(m, false)
	if msg := readOne(t, u); msg.Event() != EventPagefault || msg.Address() != addr(m) || msg.Flags()&FlagMinor != 0 {
		t.Fatalf("touch after the hole was punched: %v, want MISSING at %#x", &msg, addr(m))
	}
	_, err = u.CopyAll(addr(m), page(4), 0)
	mustNil(t, err, "copy after the punch")
	mustNil(t, waitT(t, done, "populate"), "populate")
	if m[0] != 4 {
		t.Fatalf("page reads %d after the refill, want 4", m[0])
	}
}

// Past the end of the shmem object ZEROPAGE fails with EFAULT, as COPY does, but CONTINUE
// with EINVAL: shmem_get_folio refuses an index past i_size with EINVAL, and only its ENOENT
// (page not cached) becomes EFAULT in mfill_atomic_pte_continue.
func TestZeroPageContinuePastEndOfObject(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	m := pastEnd(t, "uffd-eof2")
	mustNil(t, u.Register(addr(m), 2*pg, ModeMissing|ModeMinor), "register")
	end := addr(m) + uintptr(pg)
	if _, err := u.ZeroPage(end, pg, 0); !errors.Is(err, unix.EFAULT) {
		t.Errorf("ZEROPAGE past the end of the object: %v, want EFAULT", err)
	}
	if _, err := u.Continue(end, pg, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("CONTINUE past the end of the object: %v, want EINVAL", err)
	}
	// Inside the object both work: ZEROPAGE fills the page, then a second view's CONTINUE
	// maps it.
	n, err := u.ZeroPage(addr(m), pg, 0)
	if err != nil || n != pg {
		t.Fatalf("ZEROPAGE inside the object: %d, %v", n, err)
	}
	if _, err := u.Continue(addr(m), pg, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("CONTINUE on the zero-filled, mapped page: %v, want EEXIST", err)
	}
}

// While an UNMAP event is unread, every resolving ioctl answers EAGAIN and munmap waits.
func TestEAGAINWhileUnmapEventUnread(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeatureEventUnmap))
	mem := anonT(t, 2*pg)
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
	// Unregister before the cleanup unmaps the rest, or that munmap waits for its own event.
	t.Cleanup(func() { u.Unregister(addr(mem), pg) })
	res := make(chan error, 1)
	go func() {
		_, _, errno := unix.Syscall(unix.SYS_MUNMAP, addr(mem)+uintptr(pg), uintptr(pg), 0)
		if errno != 0 {
			res <- errno
			return
		}
		res <- nil
	}()
	waitReadable(t, u)
	if _, err := u.ZeroPage(addr(mem), pg, 0); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("ZEROPAGE with an UNMAP event unread: %v, want EAGAIN", err)
	}
	if _, err := u.Copy(addr(mem), ptrOf(page(1)), pg, 0); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("COPY with an UNMAP event unread: %v, want EAGAIN", err)
	}
	m := readOne(t, u)
	if s, e := m.Range(); m.Event() != EventUnmap || s != addr(mem)+uintptr(pg) || e != addr(mem)+uintptr(2*pg) {
		t.Fatalf("%v, want unmap of the second page", &m)
	}
	mustNil(t, waitT(t, res, "munmap after its event was read"), "munmap")
	if n, err := u.ZeroPage(addr(mem), pg, 0); err != nil || n != pg {
		t.Fatalf("ZEROPAGE once the event was read: %d, %v", n, err)
	}
}

// Hugetlb memory: MAP_HUGETLB|MAP_NORESERVE maps and registers without a single huge page
// reserved; the fault is reported; resolving it needs a free page in the pool. With an empty
// pool the kernel answers UFFDIO_COPY with EEXIST (although nothing is mapped) and the thread,
// once woken, faults again.
func TestHugetlbNoreserve(t *testing.T) {
	t.Parallel()
	const huge = 2 << 20
	u := newT(t, WithFeatures(FeatureMissingHugetlbfs))
	m, err := unix.Mmap(-1, 0, huge, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB|unix.MAP_NORESERVE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOMEM) {
		t.Skipf("kernel without 2 MiB hugetlb pages: %v", err)
	}
	mustNil(t, err, "mmap MAP_HUGETLB|MAP_NORESERVE")
	defer unix.Munmap(m)
	ioctls, err := u.RegisterIoctls(addr(m), huge, ModeMissing)
	mustNil(t, err, "register hugetlb memory")
	if ioctls&IoctlCopy == 0 || ioctls&IoctlZeropage != 0 {
		t.Errorf("hugetlb range ioctls %v: want COPY, and no ZEROPAGE (the kernel has none for hugetlb)", ioctls)
	}
	if _, err := u.ZeroPage(addr(m), huge, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ZEROPAGE on hugetlb: %v, want EINVAL", err)
	}
	if _, err := u.Copy(addr(m), ptrOf(page(1)), pg, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("COPY of one base page into hugetlb memory: %v, want EINVAL (huge page granularity)", err)
	}
	done := populate(m, false)
	msg := readOne(t, u)
	if msg.Event() != EventPagefault || msg.Address() != addr(m) {
		t.Fatalf("hugetlb fault: %v", &msg)
	}
	src := anonT(t, huge)
	n, err := u.Copy(addr(m), ptrOf(src), huge, 0)
	if free := hugePagesFree(t); free == 0 {
		if err == nil {
			t.Fatalf("COPY into hugetlb memory with no free huge page succeeded (%d bytes)", n)
		}
		t.Logf("COPY with an empty huge page pool: %v", err)
		mustNil(t, u.Wake(addr(m), huge), "wake")
		msg := readOne(t, u) // woken with nothing mapped, the thread faults again
		if msg.Event() != EventPagefault || msg.Address() != addr(m) {
			t.Fatalf("after the wake: %v, want the same fault again", &msg)
		}
		mustNil(t, u.Unregister(addr(m), huge), "unregister")
		if err := waitT(t, done, "populate after unregister"); err == nil {
			t.Fatal("populating hugetlb memory with an empty pool succeeded")
		}
		return
	}
	if err != nil || n != huge {
		t.Fatalf("COPY of a huge page with free pages in the pool: %d, %v", n, err)
	}
	mustNil(t, waitT(t, done, "populate"), "populate")
}

func hugePagesFree(t testing.TB) int {
	data, err := os.ReadFile("/proc/meminfo")
	mustNil(t, err, "meminfo")
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "HugePages_Free:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// threadBlockedIn waits until thread tid sleeps (state S or D) inside system call nr, read
// from /proc/self/task/<tid>/stat and /proc/self/task/<tid>/syscall: the kernel's own account
// of where the thread is, not a timing window.
func threadBlockedIn(t testing.TB, tid int, nr uintptr) string {
	t.Helper()
	dir := "/proc/self/task/" + strconv.Itoa(tid) + "/"
	deadline := time.Now().Add(20 * time.Second)
	for {
		stat, err1 := os.ReadFile(dir + "stat")
		sc, err2 := os.ReadFile(dir + "syscall")
		if err1 != nil || err2 != nil {
			t.Fatalf("thread %d: %v %v", tid, err1, err2)
		}
		// stat: "tid (comm) S ..."; the command may hold spaces, the state follows the last ')'.
		st := string(stat)
		state := ""
		if i := strings.LastIndexByte(st, ')'); i >= 0 && i+2 < len(st) {
			state = st[i+2 : i+3]
		}
		f := strings.Fields(string(sc))
		if (state == "S" || state == "D") && len(f) > 0 && f[0] == strconv.Itoa(int(nr)) {
			wchan, _ := os.ReadFile(dir + "wchan")
			return "state " + state + ", in system call " + f[0] + ", wchan " + string(wchan)
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d: state %q, syscall %q after 20 s, want asleep in system call %d", tid, state, sc, nr)
		}
		time.Sleep(time.Millisecond) // polling the kernel's account, not waiting for time to pass
	}
}

// lockedTID runs f on a goroutine locked to its thread and returns that thread's id.
func lockedThread[T any](f func() T) (tid <-chan int, res <-chan T) {
	tids := make(chan int, 1)
	out := make(chan T, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tids <- unix.Gettid()
		out <- f()
	}()
	return tids, out
}
