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
