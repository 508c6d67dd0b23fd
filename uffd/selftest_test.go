package uffd

// A port of the cases of the kernel's tools/testing/selftests/mm/uffd-unit-tests.c that apply
// to anonymous and shmem memory: api, register-ioctls, zeropage, minor, minor-wp, sigbus,
// events (fork, remap, remove, unmap), poison and mmap-changing.

import (
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
)

func init() {
	helpers["fork-event"] = helperForkEvent
	helpers["sigbus-fatal"] = helperSigbusFatal
}

// api: the handshake's refusals.
func TestSelftestAPI(t *testing.T) {
	t.Parallel()
	fd, err := sysUserfaultfd(unix.O_CLOEXEC | unix.O_NONBLOCK)
	mustNil(t, err, "userfaultfd")
	defer unix.Close(fd)
	// Before UFFDIO_API, the other ioctls are refused.
	r := uffdioRegister{Range: uffdioRange{Start: 0x100000, Len: uint64(pg)}, Mode: uint64(ModeMissing)}
	if err := ioctlPtr(fd, ioctlRegister, ptr(&r)); err != unix.EINVAL {
		t.Errorf("REGISTER before UFFDIO_API: %v, want EINVAL", err)
	}
	bad := uffdioAPI{API: uffdAPI + 1}
	if err := ioctlPtr(fd, ioctlAPI, ptr(&bad)); err != unix.EINVAL {
		t.Errorf("UFFDIO_API with a wrong api: %v, want EINVAL", err)
	}
	all := uffdioAPI{API: uffdAPI, Features: ^uint64(0)}
	if err := ioctlPtr(fd, ioctlAPI, ptr(&all)); err != unix.EINVAL {
		t.Errorf("UFFDIO_API with every feature bit: %v, want EINVAL", err)
	}
	good := uffdioAPI{API: uffdAPI}
	if err := ioctlPtr(fd, ioctlAPI, ptr(&good)); err != nil {
		t.Fatalf("UFFDIO_API after refused attempts: %v", err)
	}
	if Ioctls(good.Ioctls) != apiIoctls {
		t.Errorf("UFFDIO_API ioctls %v", Ioctls(good.Ioctls))
	}
	again := uffdioAPI{API: uffdAPI}
	if err := ioctlPtr(fd, ioctlAPI, ptr(&again)); err != unix.EINVAL {
		t.Errorf("a second UFFDIO_API: %v, want EINVAL", err)
	}
}

// register-ioctls: the ioctls the kernel declares for each memory type and mode.
func TestSelftestRegisterIoctls(t *testing.T) {
	t.Parallel()
	avail, err := Available()
	mustNil(t, err, "Available")
	u := newT(t, WithFeatures(avail&^FeatureEventFork))
	rel := mem.KernelRelease()
	at66, at68 := mem.ReleaseAtLeast(rel, "6.6"), mem.ReleaseAtLeast(rel, "6.8")
	for _, shmem := range []bool{false, true} {
		for mode := ModeMissing; mode <= ModeMissing|ModeWP|ModeMinor; mode++ {
			t.Run(fmt.Sprintf("shmem=%v/%v", shmem, mode), func(t *testing.T) {
				var mem []byte
				if shmem {
					mem = shmemT(t, pg)
				} else {
					mem = anonT(t, pg)
				}
				ioctls, err := u.RegisterIoctls(addr(mem), pg, mode)
				if !shmem && mode&ModeMinor != 0 {
					if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "ModeMinor") {
						t.Fatalf("minor mode on private anonymous memory: %v, want EINVAL explaining it", err)
					}
					return
				}
				mustNil(t, err, "register")
				defer u.Unregister(addr(mem), pg)
				want := IoctlWake | IoctlCopy | IoctlZeropage
				if at66 {
					want |= IoctlPoison
				}
				if !shmem && at68 {
					want |= IoctlMove
				}
				if mode&ModeWP != 0 {
					want |= IoctlWriteprotect
				}
				if mode&ModeMinor != 0 {
					want |= IoctlContinue
				}
				if ioctls != want {
					t.Fatalf("ioctls %v, want %v", ioctls, want)
				}
			})
		}
	}
}

// Bad ranges are refused before the kernel sees them, with the reason.
func TestRegisterBadRange(t *testing.T) {
	t.Parallel()
	u := newT(t)
	mem := anonT(t, 2*pg)
	for _, c := range []struct {
		a    uintptr
		n    int
		mode Mode
		want string
	}{
		{addr(mem) + 1, pg, ModeMissing, "multiples of the page size"},
		{addr(mem), pg + 1, ModeMissing, "multiples of the page size"},
		{addr(mem), 0, ModeMissing, "length must be positive"},
		{addr(mem), pg, 0, "mode"},
		{addr(mem), pg, 1 << 5, "mode"},
	} {
		err := u.Register(c.a, c.n, c.mode)
		var re *RangeError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Register(%#x, %d, %v) = %v, want a RangeError about %q", c.a, c.n, c.mode, err, c.want)
		}
	}
	if err := u.Register(0x10000, pg, ModeMissing); !errors.Is(err, unix.ENOMEM) && !errors.Is(err, unix.EINVAL) {
		t.Errorf("Register of unmapped memory: %v", err)
	}
}

// zeropage: ZEROPAGE maps zeros; a second one meets EEXIST; DONTWAKE leaves the waiter asleep.
func TestSelftestZeropage(t *testing.T) {
	t.Parallel()
	for _, shmem := range []bool{false, true} {
		t.Run(fmt.Sprintf("shmem=%v", shmem), func(t *testing.T) {
			u := newT(t, WithFeatures(shmemFeatures))
			var mem []byte
			if shmem {
				mem = shmemT(t, 2*pg)
			} else {
				mem = anonT(t, 2*pg)
			}
			mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
			done := populate(mem[:pg], false)
			readOne(t, u)
			n, err := u.ZeroPage(addr(mem), pg, DontWake)
			if err != nil || n != pg {
				t.Fatalf("ZEROPAGE: %d, %v", n, err)
			}
			if w := waiting(t, u); w != 1 {
				t.Fatalf("%d waiting after ZEROPAGE with DONTWAKE", w)
			}
			mustNil(t, u.Wake(addr(mem), pg), "wake")
			mustNil(t, waitT(t, done, "populate"), "populate")
			if _, err := u.ZeroPage(addr(mem), pg, 0); !errors.Is(err, unix.EEXIST) {
				t.Fatalf("second ZEROPAGE: %v, want EEXIST", err)
			}
			s := 0
			for i := 0; i < pg; i++ {
				s += int(mem[i])
			}
			if s != 0 {
				t.Fatalf("zero page sums to %d", s)
			}
		})
	}
}

// minor: pages filled through an unregistered view fault MINOR in the registered one, and
// CONTINUE maps the page cache's contents, including changes made before it.
func TestSelftestMinor(t *testing.T) {
	t.Parallel()
	const n = 8
	u := newT(t, WithFeatures(shmemFeatures))
	reg, other := pair(t, n*pg)
	for i := range other { // fill the page cache through the unregistered view
		other[i] = byte(i / pg)
	}
	mustNil(t, u.Register(addr(reg), len(reg), ModeMinor), "register")
	for p := 0; p < n; p++ {
		done := populate(reg[p*pg:(p+1)*pg], p%2 == 1)
		m := readOne(t, u)
		if m.Flags()&FlagMinor == 0 || m.Address() != addr(reg)+uintptr(p*pg) {
			t.Fatalf("page %d: %v, want a minor fault", p, &m)
		}
		other[p*pg+1] = 0xee // changed in the page cache before the page is mapped
		_, err := u.Continue(addr(reg)+uintptr(p*pg), pg, 0)
		mustNil(t, err, "continue")
		mustNil(t, waitT(t, done, "populate"), "populate")
		if reg[p*pg] != byte(p) || reg[p*pg+1] != 0xee {
			t.Fatalf("page %d reads %d %d", p, reg[p*pg], reg[p*pg+1])
		}
	}
}

// minor-wp: CONTINUE with WP maps the page write-protected; a write then faults WP until the
// protection is removed.
func TestSelftestMinorWP(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures|FeatureWPHugetlbfsShmem|FeaturePagefaultFlagWP))
	reg, other := pair(t, pg)
	other[0] = 42
	ioctls, err := u.RegisterIoctls(addr(reg), pg, ModeMinor|ModeWP)
	mustNil(t, err, "register")
	if ioctls&(IoctlContinue|IoctlWriteprotect) != IoctlContinue|IoctlWriteprotect {
		t.Fatalf("ioctls %v", ioctls)
	}
	done := populate(reg, false)
	m := readOne(t, u)
	if m.Flags()&FlagMinor == 0 {
		t.Fatalf("%v, want minor", &m)
	}
	_, err = u.Continue(addr(reg), pg, WriteProtect)
	mustNil(t, err, "continue wp")
	mustNil(t, waitT(t, done, "read"), "read")
	if !uffdWP(t, addr(reg)) {
		t.Fatal("pagemap: CONTINUE with WP left the page writable")
	}
	done = populate(reg, true)
	m = readOne(t, u)
	if m.Flags()&FlagWP == 0 || m.Flags()&FlagWrite == 0 {
		t.Fatalf("%v, want a WP write fault", &m)
	}
	mustNil(t, u.WriteProtectRange(addr(reg), pg, false, 0), "unprotect")
	mustNil(t, waitT(t, done, "write"), "write")
	if reg[0] != 42 {
		t.Fatalf("reads %d", reg[0])
	}
}

// faultAddr touches b[off] in a plain Go load with panics on faults enabled, and returns the
// address of a SIGBUS/SIGSEGV it raised (0 if none).
func faultAddr(b []byte, off int) (a uintptr, v byte) {
	ch := make(chan uintptr, 1)
	go func() {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			r := recover()
			if e, ok := r.(interface{ Addr() uintptr }); ok {
				ch <- e.Addr()
				return
			}
			if r != nil {
				panic(r)
			}
		}()
		v = b[off]
		ch <- 0
	}()
	a = <-ch
	return a, v
}

// sigbus: with UFFD_FEATURE_SIGBUS a fault raises SIGBUS instead of a message. In a Go program
// the runtime turns SIGBUS in Go code into a fatal error, or, in a goroutine that called
// debug.SetPanicOnFault(true), into a panic whose value carries the address.
func TestSelftestSigbus(t *testing.T) {
	t.Parallel()
	for _, shmem := range []bool{false, true} {
		t.Run(fmt.Sprintf("shmem=%v", shmem), func(t *testing.T) {
			u := newT(t, WithFeatures(FeatureSigbus|shmemFeatures))
			var mem []byte
			if shmem {
				mem = shmemT(t, pg)
			} else {
				mem = anonT(t, pg)
			}
			mustNil(t, u.Register(addr(mem), pg, ModeMissing), "register")
			if a, _ := faultAddr(mem, 5); a != addr(mem)+5 {
				t.Fatalf("fault address %#x, want SIGBUS at %#x", a, addr(mem)+5)
			}
			noMsg(t, u)
			_, err := u.CopyAll(addr(mem), page(9), 0)
			mustNil(t, err, "copy")
			if a, v := faultAddr(mem, 5); a != 0 || v != 9 {
				t.Fatalf("after COPY: fault %#x, value %d", a, v)
			}
		})
	}
	out, err := helperCmd(t, "sigbus-fatal").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "SIGBUS") {
		t.Fatalf("touching SIGBUS-mode memory without recovery: %v, want exit status 2 and a SIGBUS report\n%s", err, out)
	}
}

// helperSigbusFatal touches a SIGBUS-mode range from a plain Go loop, with no recovery: the Go
// runtime reports the SIGBUS and exits with status 2.
func helperSigbusFatal() int {
	u, err := New(WithFeatures(FeatureSigbus))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	mem, err := unix.Mmap(-1, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil || u.Register(addr(mem), pg, ModeMissing) != nil {
		fmt.Println("setup failed")
		return 1
	}
	s := 0
	for i := 0; i < len(mem); i += 512 {
		s += int(mem[i])
	}
	fmt.Println("no SIGBUS, sum", s)
	return 0
}

// events/remove: MADV_DONTNEED on a registered range with EVENT_REMOVE reports the range and
// blocks until the event is read.
func TestSelftestEventRemove(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeatureEventRemove))
	mem := anonT(t, 4*pg)
	mem[0], mem[pg] = 1, 1
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
	m := eventOf(t, u, "madvise", func() error { return unix.Madvise(mem[:2*pg], unix.MADV_DONTNEED) })
	s, e := m.Range()
	if m.Event() != EventRemove || s != addr(mem) || e != addr(mem)+uintptr(2*pg) {
		t.Fatalf("%v, want remove [%#x, %#x)", &m, addr(mem), addr(mem)+uintptr(2*pg))
	}
}

// eventOf runs act in a goroutine: act makes the kernel queue an event on u and wait until it
// is read. It returns the message read, once act has returned nil.
func eventOf(t *testing.T, u *UFFD, what string, act func() error) Msg {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- act() }()
	m := readOne(t, u)
	mustNil(t, waitT(t, res, what), what)
	return m
}

// events/unmap: munmap with EVENT_UNMAP reports the range.
func TestSelftestEventUnmap(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeatureEventUnmap))
	mem, err := unix.Mmap(-1, 0, 3*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	mustNil(t, err, "mmap")
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
	m := eventOf(t, u, "munmap", func() error { return unix.Munmap(mem) })
	s, e := m.Range()
	if m.Event() != EventUnmap || s != addr(mem) || e != addr(mem)+uintptr(3*pg) {
		t.Fatalf("%v, want unmap of the range", &m)
	}
}

// events/remap: moving a registered range with mremap reports from, to and the length, and the
// range stays registered at its new address.
func TestSelftestEventRemap(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeatureEventRemap))
	src, err := unix.Mmap(-1, 0, 2*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	mustNil(t, err, "mmap")
	dst := anonT(t, 2*pg) // the place to move to; mremap replaces it
	mustNil(t, u.Register(addr(src), len(src), ModeMissing), "register")
	m := eventOf(t, u, "mremap", func() error {
		_, _, errno := unix.Syscall6(unix.SYS_MREMAP, addr(src), uintptr(len(src)), uintptr(len(src)),
			unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, addr(dst), 0)
		if errno != 0 {
			return errno
		}
		return nil
	})
	from, to, l := m.Remap()
	if m.Event() != EventRemap || from != addr(src) || to != addr(dst) || l != uint64(len(src)) {
		t.Fatalf("%v, want remap %#x -> %#x len %d", &m, addr(src), addr(dst), len(src))
	}
	done := populate(dst[:pg], false)
	m = readOne(t, u)
	if m.Event() != EventPagefault || m.Address() != addr(dst) {
		t.Fatalf("%v, want a fault at the new address", &m)
	}
	_, err = u.ZeroPage(addr(dst), pg, 0)
	mustNil(t, err, "zeropage")
	mustNil(t, waitT(t, done, "populate"), "populate")
}

// events/fork: a real fork(2) of a process with registered memory (in a helper process: the Go
// runtime only forks to exec, with CLONE_VM, which is no fork of the address space).
func TestSelftestEventFork(t *testing.T) {
	t.Parallel()
	if unix.Geteuid() != 0 {
		t.Skip("UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE; this test is written for a root test run")
	}
	out := runHelper(t, helperCmd(t, "fork-event"))
	for _, want := range []string{"PASS: EAGAIN while the fork event is unread", "PASS: fork event", "PASS: child fault served", "PASS: child exited 42"} {
		if !strings.Contains(out, want) {
			t.Errorf("the helper did not report %q:\n%s", want, out)
		}
	}
}

// helperForkEvent registers memory with EVENT_FORK, forks with a raw fork(2), and serves the
// child's fault through the userfaultfd the fork event hands over: the child's copy of the
// range is registered with that new userfaultfd.
func helperForkEvent() int {
	var c check
	u, err := New(WithFeatures(FeatureEventFork))
	if err != nil {
		c.fail("New: %v", err)
		return c.code()
	}
	defer u.Close()
	mem, err := unix.Mmap(-1, 0, pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		c.fail("mmap: %v", err)
		return c.code()
	}
	if err := u.Register(addr(mem), pg, ModeMissing); err != nil {
		c.fail("register: %v", err)
		return c.code()
	}
	type forked struct {
		pid    int
		status unix.WaitStatus
		err    error
	}
	res := make(chan forked, 1)
	go func() {
		runtime.LockOSThread()
		pid := rawForkTouchExit(addr(mem))
		if pid < 0 {
			res <- forked{err: unix.Errno(-pid)}
			return
		}
		var ws unix.WaitStatus
		_, err := unix.Wait4(pid, &ws, 0, nil)
		res <- forked{pid: pid, status: ws, err: err}
	}()
	// With the fork event unread, the parent's resolving ioctls answer EAGAIN.
	pfd := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, 20000)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			c.fail("poll for the fork event: %d, %v", n, err)
			return c.code()
		}
		break
	}
	if _, err := u.ZeroPage(addr(mem), pg, 0); !errors.Is(err, unix.EAGAIN) {
		c.fail("ZEROPAGE with a FORK event unread: %v, want EAGAIN", err)
	} else {
		c.pass("EAGAIN while the fork event is unread")
	}
	m := readOneHelper(u)
	if m.Event() != EventFork {
		c.fail("message %v, want fork", &m)
		return c.code()
	}
	child, err := FromFD(m.ForkFD())
	if err != nil {
		c.fail("FromFD(fork fd %d): %v", m.ForkFD(), err)
		return c.code()
	}
	defer child.Close()
	c.pass(fmt.Sprintf("fork event, child userfaultfd %d", m.ForkFD()))
	cm := readOneHelper(child)
	if cm.Event() != EventPagefault || cm.Address()&^uintptr(pg-1) != addr(mem) {
		c.fail("child message %v", &cm)
		return c.code()
	}
	if _, err := child.CopyAll(addr(mem), page(42), 0); err != nil {
		c.fail("COPY into the child: %v", err)
		return c.code()
	}
	c.pass("child fault served")
	r := <-res
	if r.err != nil || !r.status.Exited() || r.status.ExitStatus() != 42 {
		c.fail("child: %v, status %v", r.err, r.status)
	} else {
		c.pass("child exited 42")
	}
	return c.code()
}

func readOneHelper(u *UFFD) Msg {
	var m [1]Msg
	u.ReadMessages(m[:])
	return m[0]
}

// poison: POISON makes an access raise SIGBUS, wakes a thread blocked on the page, and meets
// EEXIST on a page that exists.
func TestSelftestPoison(t *testing.T) {
	t.Parallel()
	for _, shmem := range []bool{false, true} {
		t.Run(fmt.Sprintf("shmem=%v", shmem), func(t *testing.T) {
			u := newT(t, WithFeatures(FeaturePoison|shmemFeatures))
			var mem []byte
			if shmem {
				mem = shmemT(t, 3*pg)
			} else {
				mem = anonT(t, 3*pg)
			}
			mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
			n, err := u.Poison(addr(mem), pg, 0)
			if err != nil || n != pg {
				t.Fatalf("POISON: %d, %v", n, err)
			}
			if a, _ := faultAddr(mem, 7); a != addr(mem)+7 {
				t.Fatalf("access to a poisoned page: fault %#x, want SIGBUS at %#x", a, addr(mem)+7)
			}
			// A thread blocked on page 1 is woken by POISON and its access fails.
			done := populate(mem[pg:2*pg], false)
			readOne(t, u)
			_, err = u.Poison(addr(mem)+uintptr(pg), pg, 0)
			mustNil(t, err, "poison page 1")
			if err := waitT(t, done, "populate of a page poisoned meanwhile"); !errors.Is(err, unix.EHWPOISON) && !errors.Is(err, unix.EFAULT) {
				t.Fatalf("MADV_POPULATE_READ of a page poisoned while it waited: %v, want EHWPOISON or EFAULT", err)
			}
			_, err = u.ZeroPage(addr(mem)+uintptr(2*pg), pg, 0)
			mustNil(t, err, "zeropage")
			if _, err := u.Poison(addr(mem)+uintptr(2*pg), pg, 0); !errors.Is(err, unix.EEXIST) {
				t.Fatalf("POISON of an existing page: %v, want EEXIST", err)
			}
		})
	}
}

// mmap-changing: while a non-cooperative event is unread every resolving ioctl answers EAGAIN,
// which costs no allocation; once the event is read they work again. Not parallel: it counts
// allocations.
func TestSelftestMmapChanging(t *testing.T) {
	u := newT(t, WithFeatures(FeatureEventRemove|FeatureMove|shmemFeatures|FeaturePoison))
	mem := anonT(t, 2*pg)
	mem[pg] = 1
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing|ModeWP), "register")
	res := make(chan error, 1)
	go func() { res <- unix.Madvise(mem[pg:], unix.MADV_DONTNEED) }()
	waitReadable(t, u)
	src := page(1)
	// MOVE's source is an mmap'd page: a move that went through would take the page away
	// from its mapping, which must never be the Go heap.
	moveSrc := anonT(t, pg)
	moveSrc[0] = 1
	a := addr(mem)
	ops := map[string]func() error{
		"COPY":         func() error { _, err := u.Copy(a, ptrOf(src), pg, 0); return err },
		"ZEROPAGE":     func() error { _, err := u.ZeroPage(a, pg, 0); return err },
		"WRITEPROTECT": func() error { return u.WriteProtectRange(a, pg, true, 0) },
		"POISON":       func() error { _, err := u.Poison(a, pg, 0); return err },
		"MOVE":         func() error { _, err := u.Move(a, addr(moveSrc), pg, 0); return err },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, unix.EAGAIN) || !strings.Contains(err.Error(), "UFFDIO_"+name) {
			t.Errorf("%s with an event unread: %v, want EAGAIN naming UFFDIO_%s", name, err, name)
		}
	}
	var bad int
	allocs := allocsPerRun(100, func() {
		if _, err := u.Copy(a, ptrOf(src), pg, 0); !errors.Is(err, unix.EAGAIN) {
			bad++
		}
	})
	if bad != 0 || allocs >= 0.5 {
		t.Errorf("EAGAIN path: %d unexpected results, %v allocations per call", bad, allocs)
	}
	notDone(t, res, "madvise with its event unread")
	m := readOne(t, u)
	if m.Event() != EventRemove {
		t.Fatalf("%v, want remove", &m)
	}
	mustNil(t, waitT(t, res, "madvise"), "madvise")
	if _, err := u.Copy(a, ptrOf(src), pg, 0); err != nil {
		t.Fatalf("COPY once the event was read: %v", err)
	}
}

// The EEXIST path allocates nothing. Not parallel: it counts allocations.
func TestEEXISTAllocatesNothing(t *testing.T) {
	u := newT(t)
	mem := anonT(t, pg)
	mustNil(t, u.Register(addr(mem), pg, ModeMissing), "register")
	_, err := u.ZeroPage(addr(mem), pg, 0)
	mustNil(t, err, "zeropage")
	src := page(1)
	var bad int
	allocs := allocsPerRun(200, func() {
		if _, err := u.Copy(addr(mem), ptrOf(src), pg, 0); !errors.Is(err, unix.EEXIST) {
			bad++
		}
		if _, err := u.ZeroPage(addr(mem), pg, 0); !errors.Is(err, unix.EEXIST) {
			bad++
		}
		if err := u.Wake(addr(mem), pg); err != nil {
			bad++
		}
	})
	if bad != 0 || allocs >= 0.5 {
		t.Fatalf("EEXIST path: %d unexpected results, %v allocations per round", bad, allocs)
	}
}
