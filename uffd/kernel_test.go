package uffd

// The facts of userfaultfd on shared memory this package builds on, each checked against the
// running kernel. Memory is touched by system calls (MADV_POPULATE_READ/WRITE, read(2)) or by
// plain Go loops, never by runtime assembly.
//
// Whether a thread is still blocked in a fault is read from the kernel: fdinfo's "total" counts
// the threads waiting on the userfaultfd. A wake-up happens inside the ioctl that does it, so
// "total" right after the ioctl returns is the answer, with no waiting involved.

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// populate raises the faults of b inside madvise(MADV_POPULATE_READ or _WRITE) in a new
// goroutine. A goroutine blocked in a system call holds no P and gets no preemption signal, so
// it stays blocked until the fault is resolved (a goroutine blocked in a user-mode fault is
// interrupted by the scheduler's signals and retries the fault).
func populate(b []byte, write bool) <-chan error {
	adv := unix.MADV_POPULATE_READ
	if write {
		adv = unix.MADV_POPULATE_WRITE
	}
	ch := make(chan error, 1)
	go func() { ch <- unix.Madvise(b, adv) }()
	return ch
}

// waiting returns how many threads wait in faults on u (fdinfo "total").
func waiting(t testing.TB, u *UFFD) uint64 {
	t.Helper()
	info, ok := readFdinfo(u.Fd())
	if !ok {
		t.Fatal("no fdinfo")
	}
	return info.total
}

// waitWaiting waits until n threads wait in faults on u.
func waitWaiting(t testing.TB, u *UFFD, n uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for waiting(t, u) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d threads waiting after 20 s, want %d", waiting(t, u), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitReadable waits until a message (a fault or an event) can be read, with poll(2).
func waitReadable(t testing.TB, u *UFFD) {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, 20000)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		mustNil(t, err, "poll")
		if n == 0 {
			t.Fatal("nothing to read after 20 s")
		}
		return
	}
}

func mustNil(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// pair maps n bytes of shmem and its mremap duplicate: two views of the same pages.
func pair(t testing.TB, n int) (a, b []byte) {
	a = shmemT(t, n)
	return a, dupView(t, a)
}

const shmemFeatures = FeatureMissingShmem | FeatureMinorShmem | FeatureThreadID

// Registration is per VMA and only for anonymous, shmem and hugetlb memory.
func TestRegisterRegularFileEINVAL(t *testing.T) {
	t.Parallel()
	u := newT(t)
	f := diskFile(t)
	mustNil(t, f.Truncate(int64(pg)), "truncate")
	m, err := unix.Mmap(int(f.Fd()), 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	mustNil(t, err, "mmap file")
	defer unix.Munmap(m)
	err = u.Register(addr(m), pg, ModeMissing)
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("register MAP_SHARED regular file: %v, want EINVAL", err)
	}
	t.Log(err)
}

// diskFile creates a file on a file system that is not tmpfs (a tmpfs file is shmem).
func diskFile(t testing.TB) *os.File {
	t.Helper()
	wd, _ := os.Getwd()
	for _, dir := range []string{t.TempDir(), "/var/tmp", wd} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) != nil || st.Type == unix.TMPFS_MAGIC {
			continue
		}
		f, err := os.CreateTemp(dir, "uffd-regular-")
		if err != nil {
			continue
		}
		t.Cleanup(func() { f.Close(); os.Remove(f.Name()) })
		return f
	}
	t.Skip("no writable file system other than tmpfs here: cannot make a regular-file mapping")
	return nil
}

func TestRegisterReadOnlyShmemEPERM(t *testing.T) {
	t.Parallel()
	u := newT(t)
	fd, err := unix.MemfdCreate("uffd-ro", unix.MFD_CLOEXEC)
	mustNil(t, err, "memfd")
	defer unix.Close(fd)
	mustNil(t, unix.Ftruncate(fd, int64(pg)), "ftruncate")
	ro, err := unix.Open("/proc/self/fd/"+itoa(fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	mustNil(t, err, "reopen read-only")
	defer unix.Close(ro)
	m, err := unix.Mmap(ro, 0, pg, unix.PROT_READ, unix.MAP_SHARED)
	mustNil(t, err, "mmap")
	defer unix.Munmap(m)
	if err := u.Register(addr(m), pg, ModeMissing); !errors.Is(err, unix.EPERM) {
		t.Fatalf("register read-only shmem: %v, want EPERM", err)
	}
}

func itoa(i int) string { return string(appendInt(nil, i)) }

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

// A duplicate made with mremap does not inherit the registration without EVENT_REMAP.
func TestDuplicateNotRegisteredWithoutRemap(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	a := shmemT(t, 2*pg)
	mustNil(t, u.Register(addr(a), len(a), ModeMissing), "register")
	b := dupView(t, a)
	// Touching the duplicate raises no event: the kernel fills the page by itself.
	mustNil(t, waitT(t, populate(b[:pg], true), "touching the duplicate"), "populate")
	noMsg(t, u)
	// That page is now in the page cache: the original view's MISSING mode no longer fires for
	// it (no MINOR mode registered): the kernel maps it silently too.
	b[0] = 9
	mustNil(t, waitT(t, populate(a[:pg], false), "touching the original"), "populate")
	noMsg(t, u)
	if a[0] != 9 {
		t.Fatalf("original reads %d, want 9 written through the duplicate", a[0])
	}
	// The other page is still missing everywhere: the original view reports it.
	done := populate(a[pg:], false)
	m := readOne(t, u)
	if m.Event() != EventPagefault || m.Address() != addr(a)+uintptr(pg) {
		t.Fatalf("message %v", &m)
	}
	_, err := u.ZeroPage(addr(a)+uintptr(pg), pg, 0)
	mustNil(t, err, "zeropage")
	mustNil(t, waitT(t, done, "populate"), "populate")
}

// With EVENT_REMAP the duplicate stays registered; the event says len 0 (a duplicate), mremap
// blocks until the event is read, and resolving ioctls answer EAGAIN meanwhile.
func TestDuplicateWithRemapEvent(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures|FeatureEventRemap))
	a := shmemT(t, pg)
	mustNil(t, u.Register(addr(a), pg, ModeMissing), "register")
	type result struct {
		to  uintptr
		err error
	}
	tids, res := lockedThread(func() result {
		r, _, errno := unix.Syscall6(unix.SYS_MREMAP, addr(a), 0, uintptr(pg), unix.MREMAP_MAYMOVE, 0, 0)
		if errno != 0 {
			return result{0, errno}
		}
		return result{r, nil}
	})
	tid := <-tids
	waitReadable(t, u)
	// The event is unread: every resolving ioctl answers EAGAIN.
	if _, err := u.ZeroPage(addr(a), pg, 0); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("ZEROPAGE with a REMAP event unread: %v, want EAGAIN", err)
	}
	// The kernel's account of the thread: asleep inside mremap (not yet started, or returned,
	// would show otherwise).
	where := threadBlockedIn(t, tid, unix.SYS_MREMAP)
	if !strings.HasSuffix(where, "wchan 0") && !strings.Contains(where, "userfaultfd") {
		t.Fatalf("mremap's thread sleeps elsewhere than in userfaultfd: %s", where)
	}
	t.Logf("mremap's thread with the event unread: %s", where)
	notDone(t, res, "mremap with its event unread")
	m := readOne(t, u)
	from, to, l := m.Remap()
	if m.Event() != EventRemap || from != addr(a) || l != 0 {
		t.Fatalf("message %v, want remap from %#x len 0", &m, addr(a))
	}
	r := waitT(t, res, "mremap after its event was read")
	mustNil(t, r.err, "mremap")
	if r.to != to {
		t.Fatalf("mremap returned %#x, event said %#x", r.to, to)
	}
	b := bytesOf(t, r.to, pg)
	// The duplicate is registered: its fault is reported at its own address.
	done := populate(b, false)
	m = readOne(t, u)
	if m.Event() != EventPagefault || m.Address() != r.to {
		t.Fatalf("message %v, want a fault at %#x", &m, r.to)
	}
	_, err := u.CopyAll(r.to, page(5), 0)
	mustNil(t, err, "copy")
	mustNil(t, waitT(t, done, "populate"), "populate")
	if a[0] != 5 || b[pg-1] != 5 {
		t.Fatalf("views read %d and %d, want 5", a[0], b[pg-1])
	}
}

// Shmem: an absent page fires MISSING; a page already in the page cache but not mapped in this
// view fires MINOR if registered MINOR, and nothing at all otherwise.
func TestShmemMissingThenMinor(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	a, b := pair(t, 2*pg)
	mustNil(t, u.Register(addr(a), len(a), ModeMissing), "register a")
	mustNil(t, u.Register(addr(b), len(b), ModeMissing|ModeMinor), "register b")

	done := populate(a[:pg], false)
	m := readOne(t, u)
	if m.Event() != EventPagefault || m.Address() != addr(a) || m.Flags()&FlagMinor != 0 {
		t.Fatalf("first touch: %v, want MISSING at %#x", &m, addr(a))
	}
	_, err := u.CopyAll(addr(a), page(7), 0)
	mustNil(t, err, "copy")
	mustNil(t, waitT(t, done, "populate a"), "populate a")

	// The page is cached now; b has no entry for it: a MINOR fault.
	done = populate(b[:pg], false)
	m = readOne(t, u)
	if m.Address() != addr(b) || m.Flags()&FlagMinor == 0 {
		t.Fatalf("touch through b: %v, want MINOR at %#x", &m, addr(b))
	}
	// COPY into b: EEXIST, the page exists although b's page-table entry is empty.
	if _, err := u.Copy(addr(b), ptrOf(page(1)), pg, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("COPY into b after a fill through a: %v, want EEXIST", err)
	}
	if _, err := u.ZeroPage(addr(b), pg, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("ZEROPAGE into b after a fill through a: %v, want EEXIST", err)
	}
	// Errors never wake: the thread still waits.
	if w := waiting(t, u); w != 1 {
		t.Fatalf("%d threads waiting after EEXIST, want 1 (errors do not wake)", w)
	}
	_, err = u.Continue(addr(b), pg, 0)
	mustNil(t, err, "continue")
	mustNil(t, waitT(t, done, "populate b"), "populate b")
	if b[pg-1] != 7 {
		t.Fatalf("b reads %d, want 7", b[pg-1])
	}
	// CONTINUE on a mapped page: EEXIST; on a page not in the page cache: EFAULT.
	if _, err := u.Continue(addr(b), pg, 0); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("CONTINUE on a mapped page: %v, want EEXIST", err)
	}
	if _, err := u.Continue(addr(b)+uintptr(pg), pg, 0); !errors.Is(err, unix.EFAULT) {
		t.Fatalf("CONTINUE on a page not in the page cache: %v, want EFAULT", err)
	}
}

// Without MINOR mode, a page filled through the other view is mapped silently.
func TestShmemCachedPageNoEventWithoutMinor(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	a, b := pair(t, pg)
	mustNil(t, u.Register(addr(b), pg, ModeMissing), "register b")
	a[0] = 4 // a is not registered: the kernel fills the page
	mustNil(t, waitT(t, populate(b, false), "touching b"), "populate")
	noMsg(t, u)
	if b[0] != 4 {
		t.Fatalf("b reads %d", b[0])
	}
}

// COPY past the end of the shmem object: EFAULT.
func TestCopyPastEndOfObject(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	m := pastEnd(t, "uffd-eof")
	mustNil(t, u.Register(addr(m), 2*pg, ModeMissing), "register")
	if _, err := u.Copy(addr(m)+uintptr(pg), ptrOf(page(1)), pg, 0); !errors.Is(err, unix.EFAULT) {
		t.Fatalf("COPY past the end of the object: %v, want EFAULT", err)
	}
	n, err := u.Copy(addr(m), ptrOf(page(1)), pg, 0)
	if err != nil || n != pg {
		t.Fatalf("COPY inside the object: %d, %v", n, err)
	}
}

// pastEnd maps two pages of a one-page memfd named name: the second lies past the end of the
// object. The mapping goes when the test ends.
func pastEnd(t testing.TB, name string) []byte {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	mustNil(t, err, "memfd")
	defer unix.Close(fd) // the mapping holds the object
	mustNil(t, unix.Ftruncate(fd, int64(pg)), "ftruncate")
	m, err := unix.Mmap(fd, 0, 2*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	mustNil(t, err, "mmap")
	t.Cleanup(func() { unix.Munmap(m) })
	return m
}

// A COPY through view a does not wake a thread blocked on the same page through view b: wake
// b yourself.
func TestCopyDoesNotWakeOtherView(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	a, b := pair(t, pg)
	mustNil(t, u.Register(addr(a), pg, ModeMissing), "register a")
	mustNil(t, u.Register(addr(b), pg, ModeMissing), "register b")
	done := populate(b, false)
	m := readOne(t, u)
	if m.Address() != addr(b) {
		t.Fatalf("message %v", &m)
	}
	_, err := u.CopyAll(addr(a), page(6), 0)
	mustNil(t, err, "copy into a")
	if w := waiting(t, u); w != 1 {
		t.Fatalf("%d threads waiting after COPY into the other view, want 1", w)
	}
	notDone(t, done, "the thread blocked on b")
	mustNil(t, u.Wake(addr(b), pg), "wake b")
	mustNil(t, waitT(t, done, "populate b"), "populate b")
	if b[0] != 6 {
		t.Fatalf("b reads %d", b[0])
	}
}

// DONTWAKE on each COPY and one WAKE over the batch.
func TestDontWakeBatch(t *testing.T) {
	t.Parallel()
	const n = 4
	u := newT(t, WithFeatures(FeatureThreadID))
	mem := anonT(t, n*pg)
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
	var dones []<-chan error
	for i := 0; i < n; i++ {
		dones = append(dones, populate(mem[i*pg:(i+1)*pg], false))
	}
	waitWaiting(t, u, n)
	for i := 0; i < n; i++ {
		_, err := u.CopyAll(addr(mem)+uintptr(i*pg), page(byte(i+1)), DontWake)
		mustNil(t, err, "copy")
	}
	if w := waiting(t, u); w != n {
		t.Fatalf("%d threads waiting after DONTWAKE copies, want %d", w, n)
	}
	mustNil(t, u.Wake(addr(mem), len(mem)), "wake")
	for i, d := range dones {
		mustNil(t, waitT(t, d, "populate"), "populate")
		if mem[i*pg] != byte(i+1) {
			t.Fatalf("page %d reads %d", i, mem[i*pg])
		}
	}
	// Drain the messages: a thread may be reported more than once (a fault is retried after
	// a signal), never for another range.
	var msgs [2 * n]Msg
	for {
		k, err := u.TryReadMessages(msgs[:])
		mustNil(t, err, "read")
		if k == 0 {
			break
		}
		for i := range msgs[:k] {
			if a := msgs[i].Address(); a < addr(mem) || a >= addr(mem)+uintptr(len(mem)) {
				t.Fatalf("message %v outside the range", &msgs[i])
			}
		}
	}
}

// A short copy: the second page exists, so the kernel copies the first and answers EAGAIN
// with copy = the bytes done; CopyAll retries the rest and meets EEXIST.
func TestShortCopyEAGAIN(t *testing.T) {
	t.Parallel()
	u := newT(t)
	mem := anonT(t, 2*pg)
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
	_, err := u.ZeroPage(addr(mem)+uintptr(pg), pg, 0)
	mustNil(t, err, "zeropage")
	src := make([]byte, 2*pg)
	for i := range src {
		src[i] = 8
	}
	n, err := u.Copy(addr(mem), ptrOf(src), len(src), 0)
	if n != pg || !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("COPY over an existing second page: %d bytes, %v; want %d and EAGAIN", n, err, pg)
	}
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "UFFDIO_COPY" {
		t.Fatalf("error %v does not name UFFDIO_COPY", err)
	}
	mustNil(t, unix.Madvise(mem[:pg], unix.MADV_DONTNEED), "madvise")
	n, err = u.CopyAll(addr(mem), src, 0)
	if n != pg || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("CopyAll: %d, %v; want %d then EEXIST", n, err, pg)
	}
	if mem[0] != 8 || mem[pg] != 0 {
		t.Fatalf("pages read %d %d", mem[0], mem[pg])
	}
}

// Write protection is per view: protecting a does not trap writes through b.
func TestWriteProtectPerView(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures|FeatureWPHugetlbfsShmem|FeaturePagefaultFlagWP))
	a, b := pair(t, pg)
	a[0] = 1 // populate the page and both page-table entries
	b[0] = 2
	mustNil(t, u.Register(addr(a), pg, ModeMissing|ModeWP), "register a")
	mustNil(t, u.Register(addr(b), pg, ModeMissing|ModeWP), "register b")
	mustNil(t, u.WriteProtectRange(addr(a), pg, true, 0), "protect a")
	mustNil(t, waitT(t, populate(b, true), "write through b"), "write b")
	noMsg(t, u)
	done := populate(a, true)
	m := readOne(t, u)
	if m.Address() != addr(a) || m.Flags()&(FlagWP|FlagWrite) != FlagWP|FlagWrite {
		t.Fatalf("write through a: %v, want a WP write fault", &m)
	}
	mustNil(t, u.WriteProtectRange(addr(a), pg, false, 0), "unprotect a (wakes)")
	mustNil(t, waitT(t, done, "write through a"), "write a")
}

// WP_ASYNC on shmem: the kernel resolves write-protect faults itself and clears the protection,
// which /proc/self/pagemap shows (bit 57, PM_UFFD_WP).
func TestWPAsyncShmem(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeatureWPAsync|FeatureWPHugetlbfsShmem|FeatureMissingShmem))
	mem := shmemT(t, pg)
	mem[0] = 1
	mustNil(t, u.Register(addr(mem), pg, ModeWP), "register")
	mustNil(t, u.WriteProtectRange(addr(mem), pg, true, 0), "protect")
	if !uffdWP(t, addr(mem)) {
		t.Fatal("pagemap: page not write-protected after UFFDIO_WRITEPROTECT")
	}
	mustNil(t, waitT(t, populate(mem, true), "write"), "write")
	noMsg(t, u)
	if uffdWP(t, addr(mem)) {
		t.Fatal("pagemap: write protection still set after an asynchronous write fault")
	}
}

// uffdWP reads the PM_UFFD_WP bit of the page at a from /proc/self/pagemap.
func uffdWP(t testing.TB, a uintptr) bool {
	t.Helper()
	f, err := os.Open("/proc/self/pagemap")
	mustNil(t, err, "pagemap")
	defer f.Close()
	var e [8]byte
	_, err = f.ReadAt(e[:], int64(a/uintptr(pg))*8)
	mustNil(t, err, "pagemap read")
	return binary.LittleEndian.Uint64(e[:])&(1<<57) != 0
}

// MADV_DONTNEED on a shmem view drops only its page-table entries: no MISSING refire, a MINOR
// fault if registered MINOR. MADV_REMOVE frees the page: MISSING fires again.
func TestDontneedVersusRemove(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	mem := shmemT(t, pg)
	mustNil(t, u.Register(addr(mem), pg, ModeMissing|ModeMinor), "register")
	serve := func(want PagefaultFlags) {
		t.Helper()
		done := populate(mem, false)
		m := readOne(t, u)
		if m.Flags()&FlagMinor != want {
			t.Fatalf("message %v, want minor flag %v", &m, want)
		}
		if want == FlagMinor {
			_, err := u.Continue(addr(mem), pg, 0)
			mustNil(t, err, "continue")
		} else {
			_, err := u.CopyAll(addr(mem), page(3), 0)
			mustNil(t, err, "copy")
		}
		mustNil(t, waitT(t, done, "populate"), "populate")
	}
	serve(0)
	mustNil(t, unix.Madvise(mem, unix.MADV_DONTNEED), "MADV_DONTNEED")
	serve(FlagMinor)
	if mem[0] != 3 {
		t.Fatalf("the page lost its contents across MADV_DONTNEED: %d", mem[0])
	}
	mustNil(t, unix.Madvise(mem, unix.MADV_REMOVE), "MADV_REMOVE")
	serve(0)
}

// When the userfaultfd is closed, the kernel unregisters the ranges and wakes the waiters; the
// faults are then served as ordinary faults: zero pages, silently.
func TestClosedUFFDServesZeroPages(t *testing.T) {
	t.Parallel()
	u, err := New(WithFeatures(shmemFeatures))
	mustNil(t, err, "New")
	mem := shmemT(t, 2*pg)
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
	done := populate(mem[:pg], false)
	readOne(t, u)
	mustNil(t, u.Close(), "close")
	mustNil(t, waitT(t, done, "the thread blocked when the userfaultfd closed"), "populate")
	s := 0
	for i := range mem {
		s += int(mem[i])
	}
	if s != 0 {
		t.Fatalf("sum %d, want zero pages", s)
	}
	if err := u.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := u.ZeroPage(addr(mem), pg, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("ioctl after Close: %v, want os.ErrClosed", err)
	}
}

// MOVE works on private anonymous memory and fails with EINVAL on shmem, where the kernel's
// ioctl mask still declares it.
func TestMove(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeatureMove|shmemFeatures))
	dst := anonT(t, pg)
	src := anonT(t, pg)
	src[0], src[pg-1] = 11, 12
	ioctls, err := u.RegisterIoctls(addr(dst), pg, ModeMissing)
	mustNil(t, err, "register anon")
	if ioctls&IoctlMove == 0 {
		t.Fatalf("anon ioctls %v lack MOVE", ioctls)
	}
	n, err := u.Move(addr(dst), addr(src), pg, 0)
	if err != nil || n != pg {
		t.Fatalf("MOVE anon: %d, %v", n, err)
	}
	if dst[0] != 11 || dst[pg-1] != 12 {
		t.Fatalf("moved page reads %d %d", dst[0], dst[pg-1])
	}
	shm := shmemT(t, pg)
	r := uffdioRegister{Range: uffdioRange{Start: uint64(addr(shm)), Len: uint64(pg)}, Mode: uint64(ModeMissing)}
	mustNil(t, u.ioctl(ioctlRegister, ptr(&r)), "raw register shmem")
	if Ioctls(r.Ioctls)&IoctlMove == 0 {
		t.Logf("this kernel no longer declares MOVE on shmem (%v)", Ioctls(r.Ioctls))
	}
	mustNil(t, u.Unregister(addr(shm), pg), "unregister")
	ioctls, err = u.RegisterIoctls(addr(shm), pg, ModeMissing)
	mustNil(t, err, "register shmem")
	if ioctls&IoctlMove != 0 {
		t.Fatalf("RegisterIoctls on shmem kept MOVE: %v", ioctls)
	}
	src2 := anonT(t, pg)
	src2[0] = 1
	if _, err := u.Move(addr(shm), addr(src2), pg, 0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("MOVE into shmem: %v, want EINVAL", err)
	}
}

// A fault the kernel takes on the process's behalf (read(2) into registered memory) reaches a
// userfaultfd made with the privilege for it, and is served like any other.
func TestKernelModeFaultServed(t *testing.T) {
	t.Parallel()
	u := newT(t, KernelFaults())
	if u.IsUserModeOnly() {
		t.Fatal("KernelFaults gave a user-mode-only userfaultfd")
	}
	mem := anonT(t, pg)
	mustNil(t, u.Register(addr(mem), pg, ModeMissing), "register")
	var p [2]int
	mustNil(t, unix.Pipe2(p[:], unix.O_CLOEXEC), "pipe")
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	unix.Write(p[1], []byte("hello"))
	res := make(chan error, 1)
	go func() {
		_, err := unix.Read(p[0], mem[:5])
		res <- err
	}()
	m := readOne(t, u)
	if m.Address() != addr(mem) || m.Flags()&FlagWrite == 0 {
		t.Fatalf("message %v, want a write fault at %#x", &m, addr(mem))
	}
	_, err := u.ZeroPage(addr(mem), pg, 0)
	mustNil(t, err, "zeropage")
	mustNil(t, waitT(t, res, "read(2)"), "read")
	if string(mem[:5]) != "hello" {
		t.Fatalf("read %q", mem[:5])
	}
}

// Unregister wakes the threads blocked in the range; they then fault as usual.
func TestUnregisterWakes(t *testing.T) {
	t.Parallel()
	u := newT(t)
	mem := anonT(t, pg)
	mustNil(t, u.Register(addr(mem), pg, ModeMissing), "register")
	done := populate(mem, false)
	readOne(t, u)
	mustNil(t, u.Unregister(addr(mem), pg), "unregister")
	mustNil(t, waitT(t, done, "populate after unregister"), "populate")
	if w := waiting(t, u); w != 0 {
		t.Fatalf("%d waiting", w)
	}
}
