package uffd

import (
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// FromFD adopts a userfaultfd whether or not its handshake was done, blocking or not, and the
// adopted fd is parked in the poller: ReadMessages works and Close wakes it.
func TestFromFD(t *testing.T) {
	t.Parallel()
	needFreeP(t)
	for _, c := range []struct {
		name      string
		blocking  bool
		handshake Feature // 0: none done; else the features asked for
	}{
		{"fresh-blocking", true, 0},
		{"fresh-nonblocking", false, 0},
		{"handshaken-blocking", true, FeatureThreadID | FeatureMissingShmem},
		{"handshaken-nonblocking", false, FeatureThreadID},
	} {
		t.Run(c.name, func(t *testing.T) {
			flags := unix.O_CLOEXEC
			if !c.blocking {
				flags |= unix.O_NONBLOCK
			}
			fd, err := sysUserfaultfd(flags)
			mustNil(t, err, "userfaultfd")
			if c.handshake != 0 {
				api := uffdioAPI{API: uffdAPI, Features: uint64(c.handshake)}
				mustNil(t, ioctlPtr(fd, ioctlAPI, ptr(&api)), "UFFDIO_API")
			}
			u, err := FromFD(fd)
			if err != nil {
				unix.Close(fd)
				t.Fatalf("FromFD: %v", err)
			}
			defer u.Close()
			if u.Features() != c.handshake {
				t.Fatalf("features %v, want %v", u.Features(), c.handshake)
			}
			if u.Ioctls()&apiIoctls != apiIoctls {
				t.Fatalf("ioctls %v", u.Ioctls())
			}
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			mustNil(t, err, "fcntl")
			if fl&unix.O_NONBLOCK == 0 {
				t.Fatal("the adopted fd is blocking")
			}
			mem := anonT(t, pg)
			mustNil(t, u.Register(addr(mem), pg, ModeMissing), "register")
			done := sumAsync(mem)
			var msgs [2]Msg
			n, err := u.ReadMessages(msgs[:])
			if err != nil || n < 1 || msgs[0].Address() != addr(mem) {
				t.Fatalf("ReadMessages: %d %v %v", n, err, &msgs[0])
			}
			if (msgs[0].ThreadID() != 0) != (c.handshake&FeatureThreadID != 0) {
				t.Fatalf("thread id %d with features %v", msgs[0].ThreadID(), c.handshake)
			}
			_, err = u.CopyAll(addr(mem), page(2), 0)
			mustNil(t, err, "copy")
			if s := waitT(t, done, "toucher"); s != 2 {
				t.Fatalf("sum %d", s)
			}
			// Close wakes a blocked ReadMessages with os.ErrClosed.
			res := make(chan error, 1)
			go func() {
				_, err := u.ReadMessages(msgs[:])
				res <- err
			}()
			mustNil(t, u.Close(), "close")
			if err := waitT(t, res, "ReadMessages across Close"); !errors.Is(err, os.ErrClosed) {
				t.Fatalf("ReadMessages after Close: %v, want os.ErrClosed", err)
			}
		})
	}
}

// FromFD refuses what is not a userfaultfd and leaves it open.
func TestFromFDRefuses(t *testing.T) {
	t.Parallel()
	r, w, err := os.Pipe()
	mustNil(t, err, "pipe")
	defer r.Close()
	defer w.Close()
	if _, err := FromFD(int(r.Fd())); err == nil || !strings.Contains(err.Error(), "not a userfaultfd") {
		t.Fatalf("FromFD(pipe) = %v", err)
	}
	if _, err := unix.FcntlInt(r.Fd(), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the refused fd was closed: %v", err)
	}
	if _, err := FromFD(-1); err == nil {
		t.Fatal("FromFD(-1) succeeded")
	}
	if _, err := FromFD(1 << 20); err == nil || !strings.Contains(err.Error(), "not open") {
		t.Fatalf("FromFD(unopened) = %v", err)
	}
}

// Ioctls racing with Close either work or report os.ErrClosed: none reaches a closed (and
// perhaps reused) descriptor number, which would show as EBADF.
func TestCloseRacesIoctls(t *testing.T) {
	t.Parallel()
	for round := 0; round < 50; round++ {
		// A fresh page each round: a child forked meanwhile by a parallel test holds the
		// previous round's userfaultfd (and its registration) until it execs.
		mem := anonT(t, pg)
		u, err := New()
		mustNil(t, err, "New")
		mustNil(t, u.Register(addr(mem), pg, ModeMissing), "register")
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var msgs [1]Msg
				for i := 0; i < 50; i++ {
					if err := u.Wake(addr(mem), pg); err != nil && !errors.Is(err, os.ErrClosed) {
						errs <- err
						return
					}
					if _, err := u.TryReadMessages(msgs[:]); err != nil && !errors.Is(err, os.ErrClosed) {
						errs <- err
						return
					}
				}
			}()
		}
		mustNil(t, u.Close(), "close")
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("ioctl racing Close: %v", err)
		}
	}
}

// The kernel shows a finished UFFDIO_API as bit 31 (UFFD_FEATURE_INITIALIZED) of the features
// in fdinfo, next to the features asked for: FromFD's first way of telling.
func TestFdinfoShowsHandshake(t *testing.T) {
	t.Parallel()
	fd, err := sysUserfaultfd(unix.O_CLOEXEC | unix.O_NONBLOCK)
	mustNil(t, err, "userfaultfd")
	defer unix.Close(fd)
	info, ok := readFdinfo(fd)
	if !ok || info.apiDone || info.features != 0 {
		t.Fatalf("fresh userfaultfd: fdinfo %+v, %v", info, ok)
	}
	api := uffdioAPI{API: uffdAPI, Features: uint64(FeatureThreadID | FeatureEventRemap)}
	mustNil(t, ioctlPtr(fd, ioctlAPI, ptr(&api)), "UFFDIO_API")
	info, ok = readFdinfo(fd)
	if !ok || !info.apiDone || info.features != FeatureThreadID|FeatureEventRemap {
		t.Fatalf("after UFFDIO_API: fdinfo %+v, %v", info, ok)
	}
}

// TestFromFDCloseOnExec: an adopted descriptor must not leak into children started later.
func TestFromFDCloseOnExec(t *testing.T) {
	fd, err := sysUserfaultfd(unix.O_NONBLOCK) // no O_CLOEXEC
	if err != nil {
		t.Skip("userfaultfd(2):", err)
	}
	u, err := FromFD(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer u.Close()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.FD_CLOEXEC == 0 {
		t.Fatal("FromFD left the descriptor without close-on-exec")
	}
}

// TestFromFDRefusesOwned: adopting the descriptor of an open UFFD would make two owners; a
// duplicate is fine, and the number is free again once its owner is closed.
func TestFromFDRefusesOwned(t *testing.T) {
	u := newT(t)
	if v, err := FromFD(u.Fd()); err == nil {
		v.Close()
		t.Fatal("FromFD adopted the descriptor of an open UFFD")
	} else if !strings.Contains(err.Error(), "already belongs") {
		t.Fatalf("error does not say why: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the refused descriptor is no longer open: %v", err)
	}
	v, dup := adoptDup(t, u)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// v's number is free: a new descriptor with that number is adoptable.
	fd, err := sysUserfaultfd(unix.O_CLOEXEC | unix.O_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	w, err := FromFD(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("FromFD of a number a closed UFFD used (%d, closed one %d): %v", fd, dup, err)
	}
	w.Close()
}

// TestFeaturesReportWhatKernelEnabled: the kernel turns WP_UNPOPULATED on with WP_ASYNC; New
// must report it as FromFD reads it back from fdinfo.
func TestFeaturesReportWhatKernelEnabled(t *testing.T) {
	srvNeed(t, FeatureWPAsync, "UFFD_FEATURE_WP_ASYNC (6.7)")
	u := newT(t, WithFeatures(FeatureWPAsync))
	if u.Features()&FeatureWPUnpopulated == 0 {
		t.Fatalf("New(WP_ASYNC).Features() = %v: the kernel enables WP_UNPOPULATED with it", u.Features())
	}
	v, _ := adoptDup(t, u)
	defer v.Close()
	if v.Features() != u.Features() {
		t.Fatalf("New reports %v, FromFD of the same userfaultfd %v", u.Features(), v.Features())
	}
}

// adoptDup adopts a duplicate of u's descriptor with FromFD; it returns the new UFFD and the
// duplicate's number. The caller closes the UFFD.
func adoptDup(t *testing.T, u *UFFD) (*UFFD, int) {
	t.Helper()
	dup, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	v, err := FromFD(dup)
	if err != nil {
		unix.Close(dup)
		t.Fatalf("FromFD of a duplicate: %v", err)
	}
	return v, dup
}

// TestFileFdKeepsNonblocking: File().Fd() must not switch the descriptor to blocking mode,
// which would make ReadMessages hold an OS thread and Close unable to interrupt it.
func TestFileFdKeepsNonblocking(t *testing.T) {
	for _, adopt := range []bool{false, true} {
		u := newT(t)
		if adopt {
			fd, err := sysUserfaultfd(unix.O_CLOEXEC) // blocking: FromFD makes it non-blocking
			mustNil(t, err, "userfaultfd")
			v, err := FromFD(fd)
			if err != nil {
				unix.Close(fd)
				t.Fatal(err)
			}
			u.Close()
			u = v
			defer v.Close()
		}
		if fd := u.File().Fd(); int(fd) != u.Fd() {
			t.Fatalf("File().Fd() = %d, Fd() = %d", fd, u.Fd())
		}
		fl, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFL, 0)
		mustNil(t, err, "F_GETFL")
		if fl&unix.O_NONBLOCK == 0 {
			t.Fatalf("adopted %v: File().Fd() switched the descriptor to blocking mode", adopt)
		}
	}
}
