package uffd

import (
	"context"
	"errors"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// WithDirectReads serves like the poller-based loop, several workers included, and Close and
// a cancelled context still stop a Serve whose workers wait in poll(2), leaving no descriptor.
func TestServerDirectReads(t *testing.T) {
	defer srvLeakCheck(t)()
	u := srvUFFD(t, FeatureMissingShmem)
	defer u.Close()
	for _, workers := range []int{1, 3} {
		s := NewServer(u, WithDirectReads(), WithWorkers(workers))
		a := srvShared(t, 64*srvPage)
		srvRegister(t, u, a, 64*srvPage, ModeMissing)
		if err := s.Handle(a, 64*srvPage, pattern{seed: 3}); err != nil {
			t.Fatal(err)
		}
		stop, _ := srvStart(t, s)
		srvWait(t, srvTouch(a, seq(0, 64)), "toucher")
		srvStopOK(t, stop)
		if err := srvVerify(a, 64*srvPage, 3, false, 0); err != nil {
			t.Error(err)
		}
		u.Unregister(a, 64*srvPage)
		srvUnmap(t, a, 64*srvPage)
	}

	ctx, cancel := context.WithCancel(context.Background())
	s := NewServer(u, WithDirectReads(), WithWorkers(2))
	c := make(chan error, 1)
	go func() { c <- s.Serve(ctx) }()
	cancel()
	if err := srvWait(t, c, "Serve after cancel"); !errors.Is(err, context.Canceled) {
		t.Errorf("Serve after cancel: %v", err)
	}
	s.Close()
}

// A UFFD kept out of the runtime poller (WithoutPoller) is served with direct reads even
// without WithDirectReads, Close still stops Serve, and ReadMessages waits in poll(2).
func TestServerWithoutPoller(t *testing.T) {
	defer srvLeakCheck(t)()
	u, err := New(WithFeatures(FeatureMissingShmem), WithoutPoller())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer u.Close()
	s := NewServer(u, WithWorkers(2))
	a := srvShared(t, 32*srvPage)
	defer srvUnmap(t, a, 32*srvPage)
	srvRegister(t, u, a, 32*srvPage, ModeMissing)
	if err := s.Handle(a, 32*srvPage, pattern{seed: 8}); err != nil {
		t.Fatal(err)
	}
	stop, _ := srvStart(t, s)
	srvWait(t, srvTouch(a, seq(0, 32)), "toucher")
	srvStopOK(t, stop)
	if err := srvVerify(a, 32*srvPage, 8, false, 0); err != nil {
		t.Error(err)
	}

	// ReadMessages: a fault's message arrives through poll(2) on this thread.
	b := srvShared(t, srvPage)
	defer srvUnmap(t, b, srvPage)
	srvRegister(t, u, b, srvPage, ModeMissing)
	touched := srvTouch(b, []int{0})
	msgs := make([]Msg, 4)
	n, err := u.ReadMessages(msgs)
	if err != nil || n != 1 || msgs[0].Address()&^uintptr(srvPage-1) != b {
		t.Fatalf("ReadMessages: %d messages (%v), want the fault at %#x", n, err, b)
	}
	if _, err := u.ZeroPage(b, srvPage, 0); err != nil {
		t.Fatal(err)
	}
	srvWait(t, touched, "toucher of the second range")
}

// FromFD with WithoutPoller never clears O_NONBLOCK, not even for a moment: the flag belongs
// to the open file, and a handler process polling the same userfaultfd (another process, or
// the standby adopting it while the primary serves) would get POLLERR from poll(2) meanwhile.
func TestFromFDWithoutPollerKeepsTheFileNonblocking(t *testing.T) {
	defer srvLeakCheck(t)()
	u := srvUFFD(t, FeatureMissingShmem)
	defer u.Close()
	stop := make(chan struct{})
	errs := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		pollErrs := 0
		pfd := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		for {
			select {
			case <-stop:
				errs <- pollErrs
				return
			default:
			}
			if _, err := unix.Poll(pfd, 0); err == nil && pfd[0].Revents&unix.POLLERR != 0 {
				pollErrs++
			}
		}
	}()
	for i := 0; i < 3000; i++ {
		fd, err := unix.FcntlInt(uintptr(u.Fd()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		v, err := FromFD(fd, WithoutPoller())
		if err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
		v.Close()
	}
	close(stop)
	if n := <-errs; n != 0 {
		t.Errorf("poll(2) on the userfaultfd answered POLLERR %d times while other UFFDs adopted it WithoutPoller: the flag was cleared", n)
	}
}

// A userfaultfd made blocking by someone else while a Server waits on it with direct reads
// (poll(2) then answers POLLERR) is made non-blocking again, and serving goes on.
func TestServerRestoresNonblock(t *testing.T) {
	defer srvLeakCheck(t)()
	u, err := New(WithFeatures(FeatureMissingShmem), WithoutPoller())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer u.Close()
	s := NewServer(u)
	a := srvShared(t, 16*srvPage)
	defer srvUnmap(t, a, 16*srvPage)
	srvRegister(t, u, a, 16*srvPage, ModeMissing)
	if err := s.Handle(a, 16*srvPage, pattern{seed: 5}); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(u.Fd(), false); err != nil { // as another holder of the file would
		t.Fatal(err)
	}
	stop, _ := srvStart(t, s)
	srvWait(t, srvTouch(a, seq(0, 16)), "toucher")
	srvStopOK(t, stop)
	if err := srvVerify(a, 16*srvPage, 5, false, 0); err != nil {
		t.Error(err)
	}
	if n := u.nonblockRestored.Load(); n == 0 {
		t.Error("the server never found the userfaultfd blocking")
	}
	if fl, _ := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Error("the userfaultfd is still blocking after serving")
	}
}
