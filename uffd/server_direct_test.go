package uffd

import (
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// WithDirectReads serves like the poller-based loop, several workers included, and Close and
// a cancelled context still stop a Serve whose workers wait in poll(2), leaving no descriptor.
func TestServerDirectReads(t *testing.T) {
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d-workers", workers), func(t *testing.T) {
			fx, done := srvFixture(t, FeatureMissingShmem, 64, ModeMissing)
			defer done()
			_, stop := fx.serve(t, pattern{seed: 3}, WithDirectReads(), WithWorkers(workers))
			fx.touchAll(t)
			srvStopOK(t, stop)
			fx.expect(t, 3)
		})
	}
	fx, done := srvFixture(t, FeatureMissingShmem, 0, 0)
	defer done()
	s := NewServer(fx.u, WithDirectReads(), WithWorkers(2))
	srvCancelStops(t, s)
	s.Close()
}

// A UFFD kept out of the runtime poller (WithoutPoller) is served with direct reads even
// without WithDirectReads, Close still stops Serve, and ReadMessages waits in poll(2).
func TestServerWithoutPoller(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 32, ModeMissing, WithoutPoller())
	defer done()
	u := fx.u
	_, stop := fx.serve(t, pattern{seed: 8}, WithWorkers(2))
	fx.touchAll(t)
	srvStopOK(t, stop)
	fx.expect(t, 8)

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
	fx, done := srvFixture(t, FeatureMissingShmem, 0, 0)
	defer done()
	u := fx.u
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
	fx, done := srvFixture(t, FeatureMissingShmem, 16, ModeMissing, WithoutPoller())
	defer done()
	u := fx.u
	s := fx.server(t, pattern{seed: 5})
	if err := unix.SetNonblock(u.Fd(), false); err != nil { // as another holder of the file would
		t.Fatal(err)
	}
	stop, _ := srvStart(t, s)
	fx.touchAll(t)
	srvStopOK(t, stop)
	fx.expect(t, 5)

	if n := u.nonblockRestored.Load(); n == 0 {
		t.Error("the server never found the userfaultfd blocking")
	}
	if fl, _ := unix.FcntlInt(uintptr(u.Fd()), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Error("the userfaultfd is still blocking after serving")
	}
}
