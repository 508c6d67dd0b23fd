package uffd

import (
	"context"
	"errors"
	"testing"
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
