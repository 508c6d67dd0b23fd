package uffd

import (
	"errors"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Pages freed (MADV_REMOVE) while several goroutines keep reading them: every resolve that
// races the event gets EAGAIN, the server reads the event and retries; nobody hangs, nobody
// reads anything but the source's bytes.
func TestServerEventsUnderLoad(t *testing.T) {
	const pages, rounds = 64, 30
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventRemove, pages, ModeMissing)
	defer done()
	a, n := fx.a, fx.n
	for _, workers := range []int{1, 2} {
		s, stop := fx.serve(t, pattern{seed: 30}, WithWorkers(workers), WithFaultAround(16*srvPage))
		var stopRemoving atomic.Bool
		removed := make(chan int)
		go func() {
			rng := rand.New(rand.NewSource(1))
			k := 0
			for !stopRemoving.Load() {
				p := rng.Intn(pages)
				l := 1 + rng.Intn(pages-p)
				unix.Madvise(srvMem(a+uintptr(p*srvPage), l*srvPage), unix.MADV_REMOVE)
				k++
			}
			removed <- k
		}()
		bad := make(chan error, 4)
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := srvMem(a, n)
				for r := 0; r < rounds; r++ {
					for i := (g * 997) % n; i < n; i += 509 {
						if got, want := m[i], patternByte(30, int64(i)); got != want {
							bad <- errors.New("wrong byte under concurrent MADV_REMOVE")
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		stopRemoving.Store(true)
		k := srvWait(t, removed, "remover")
		srvStopOK(t, stop)
		select {
		case err := <-bad:
			t.Fatal(err)
		default:
		}
		ss := s.ServerStats()
		st := s.Stats()[0]
		if ss.Removes != uint64(k) {
			t.Errorf("%d workers: %d removes counted, %d made", workers, ss.Removes, k)
		}
		t.Logf("%d workers: %d removes, missing %d, eagain %d, eexist %d", workers, k, st.Missing, st.EAGAIN, st.EEXIST)
	}
}

// Write-protect faults: the server lifts the protection of the written page and the writer
// goes on.
func TestServerWriteProtect(t *testing.T) {
	fx, done := srvFixture(t, FeaturePagefaultFlagWP, 0, 0)
	defer done()
	u := fx.u
	const pages = 8
	n := pages * srvPage
	a := srvMap(t, n, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	defer srvUnmap(t, a, n)
	srvRegister(t, u, a, n, ModeMissing|ModeWP)
	s := NewServer(u)
	srvHandle(t, s, a, n, pattern{seed: 31})
	stop, _ := srvStart(t, s)
	srvWait(t, srvTouch(a, seq(0, pages)), "reader")
	if err := u.WriteProtectRange(a, n, true, 0); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		m := srvMem(a, n)
		for i := 0; i < n; i += srvPage {
			m[i] = 0xEE
		}
		close(wrote)
	}()
	srvWait(t, wrote, "writer")

	srvStopOK(t, stop)
	m := srvMem(a, n)
	for p := 0; p < pages; p++ {
		if m[p*srvPage] != 0xEE || m[p*srvPage+1] != patternByte(31, int64(p*srvPage+1)) {
			t.Fatalf("page %d: %#x %#x", p, m[p*srvPage], m[p*srvPage+1])
		}
	}
	if st := s.Stats()[0]; st.WP != pages {
		t.Errorf("wp faults %d, want %d", st.WP, pages)
	}
}

// Close while faults stream in from several goroutines: the faults read but not resolved are
// woken, fault again, and a new server serves them; no toucher is lost.
func TestServerCloseMidFlight(t *testing.T) {
	const pages = 512
	fx, done := srvFixture(t, FeatureMissingShmem, pages, ModeMissing)
	defer done()
	a, n := fx.a, fx.n
	var touchers []<-chan int
	s1, stop1 := fx.serve(t, pattern{seed: 32}, WithWorkers(2), WithoutFaultAround())
	for g := 0; g < 4; g++ {
		order := seq(0, pages)
		rand.New(rand.NewSource(int64(g))).Shuffle(pages, func(i, j int) { order[i], order[j] = order[j], order[i] })
		touchers = append(touchers, srvTouch(a, order))
	}
	srvStopOK(t, stop1) // somewhere in the middle, or before, or after: all must work out
	s2, stop2 := fx.serve(t, pattern{seed: 32})
	for _, c := range touchers {
		srvWait(t, c, "toucher")
	}
	srvStopOK(t, stop2)
	fx.expect(t, 32)
	if got := s1.Stats()[0].Bytes + s2.Stats()[0].Bytes; got != uint64(n) {
		t.Errorf("%d bytes copied by both servers, want %d", got, n)
	}
}

// Ranges handled while Serve runs are served at once.
func TestServerHandleWhileServing(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 0, 0)
	defer done()
	u := fx.u
	s := NewServer(u)
	stop, _ := srvStart(t, s)
	const ranges, pages = 8, 16
	n := pages * srvPage
	var addrs []uintptr
	for i := 0; i < ranges; i++ {
		a := srvShared(t, n)
		defer srvUnmap(t, a, n)
		srvRegister(t, u, a, n, ModeMissing)
		srvHandle(t, s, a, n, pattern{seed: byte(40 + i)})
		addrs = append(addrs, a)
		srvWait(t, srvTouch(a, seq(0, pages)), "toucher")
	}
	srvStopOK(t, stop)
	for i, a := range addrs {
		srvExpect(t, a, n, byte(40+i), 0)
	}
}

// Unhandle drops part of a view; the hole can be handled again with another source, and the
// rest keeps its offsets.
func TestServerUnhandle(t *testing.T) {
	const pages = 12
	fx, done := srvFixture(t, FeatureMissingShmem, pages, ModeMissing)
	defer done()
	a := fx.a
	s := fx.server(t, pattern{seed: 60}, WithoutFaultAround())
	hole := a + uintptr(4*srvPage)
	if err := s.Unhandle(hole, 4*srvPage); err != nil {
		t.Fatal(err)
	}
	if err := s.Unhandle(hole+1, srvPage); err == nil {
		t.Error("Unhandle of an unaligned address succeeded")
	}
	if err := s.Handle(hole, 4*srvPage, pattern{seed: 61}); err != nil {
		t.Fatalf("Handle of the unhandled hole: %v", err)
	}
	stop, _ := srvStart(t, s)
	srvWait(t, srvTouch(a, seq(0, pages)), "toucher")
	srvStopOK(t, stop)
	srvExpect(t, a, 4*srvPage, 60, 0)
	srvExpect(t, hole, 4*srvPage, 61, 0)
	srvExpect(t, a+uintptr(8*srvPage), 4*srvPage, 60, int64(8*srvPage))
	st := s.Stats()
	if len(st) != 2 || st[0].Gone || st[0].Missing != 8 || st[1].Missing != 4 {
		t.Errorf("stats %+v: want the first view alive with 8 faults, the second with 4", st)
	}
}

// A range unhandled but left registered: its next fault stops Serve with ErrUnhandledFault
// (waking it would only make it fault again, forever); handled again, it is served.
func TestServerUnhandledAfterUnhandle(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 4, ModeMissing)
	defer done()
	s := fx.server(t, pattern{seed: 62})
	if err := s.Unhandle(fx.a, fx.n); err != nil {
		t.Fatal(err)
	}
	fx.unhandledThenServed(t, s, 63)
}

// A duplicate of the upper half picked up from the remap event, served with fault-around:
// windows through the duplicate stop at its end and read the object at the right offsets, and
// every page is filled once whichever view touches it first.
func TestServerRemapDuplicateFaultAround(t *testing.T) {
	const pages = 64
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventRemap, pages, ModeMissing)
	defer done()
	a, n := fx.a, fx.n
	s, stop := fx.serve(t, pattern{seed: 64})
	half := a + uintptr(n/2)
	d := srvDup(t, half, n/2)
	defer srvUnmap(t, d, n/2)
	c1 := srvTouch(d, seq(0, pages/2))
	c2 := srvTouch(a, seq(0, pages))
	srvWait(t, c1, "toucher of the duplicate")
	srvWait(t, c2, "toucher of the original")
	srvStopOK(t, stop)
	srvExpect(t, d, n/2, 64, int64(n/2))
	fx.expect(t, 64)
	st := s.Stats()
	if len(st) != 2 {
		t.Fatalf("stats %+v", st)
	}
	// The upper half was filled through one view or the other, once; the lower half only
	// through the original.
	if got := st[0].Bytes + st[1].Bytes; got != uint64(n) {
		t.Errorf("%d bytes filled through both views, want %d (each page once)", got, n)
	}
}

// A view unhandled while a fault's read of the source is in flight, and its address handled
// again for another object (as after an unmap and a new mapping there), gets none of the old
// object's bytes: the fault is served again from the new object.
func TestServerDemandViewReplaced(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 16
	u, a, b, cleanup := prefetchViews(t, pages)
	defer cleanup()
	src := &heldSource{pattern: pattern{seed: 9}, started: make(chan struct{}), open: make(chan struct{})}
	s := NewServer(u, WithoutFaultAround())
	if err := s.HandleViews(pages*srvPage, src, a, b); err != nil {
		t.Fatal(err)
	}
	run, _ := srvStart(t, s)
	touched := srvTouch(a, []int{0})
	srvWait(t, src.started, "the fault's read")
	for _, v := range []uintptr{a, b} {
		if err := s.Unhandle(v, pages*srvPage); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Handle(a, pages*srvPage, pattern{seed: 1}); err != nil {
		t.Fatal(err)
	}
	close(src.open)
	srvWait(t, touched, "the toucher")
	if err := srvVerify(a, pages*srvPage, 1, false, 0); err != nil {
		t.Error(err)
	}
	srvStopOK(t, run)
}
