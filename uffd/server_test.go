package uffd

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func statsAt(t testing.TB, s *Server, a uintptr) RangeStats {
	t.Helper()
	for _, st := range s.Stats() {
		if st.Addr == a {
			return st
		}
	}
	t.Fatalf("no stats for %#x in %+v", a, s.Stats())
	return RangeStats{}
}

// Three ranges with distinct sources (two from data, one zero-filled), two of them adjacent in
// one mapping, one private anonymous: every byte comes from its own source, every page is filled
// exactly once, and fault-around never crosses into the neighbour.
func TestServerSeveralRanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ServerOption
	}{
		{"default", nil},
		{"no-fault-around", []ServerOption{WithoutFaultAround()}},
		{"3-workers", []ServerOption{WithWorkers(3), WithFaultAround(64 << 10)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx, done := srvFixture(t, FeatureMissingShmem, 0, 0)
			defer done()
			u := fx.u
			const nA, nZ, nP = 64, 16, 48
			shared := srvShared(t, (nA+nZ)*srvPage)
			defer srvUnmap(t, shared, (nA+nZ)*srvPage)
			private := srvMap(t, nP*srvPage, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			defer srvUnmap(t, private, nP*srvPage)
			srvRegister(t, u, shared, (nA+nZ)*srvPage, ModeMissing)
			srvRegister(t, u, private, nP*srvPage, ModeMissing)
			zeros := shared + uintptr(nA*srvPage)

			s := NewServer(u, tc.opts...)
			srvHandle(t, s, shared, nA*srvPage, pattern{seed: 1})
			srvHandle(t, s, zeros, nZ*srvPage, nil)
			srvHandle(t, s, private, nP*srvPage, pattern{seed: 2})
			stop, _ := srvStart(t, s)
			a := srvTouch(shared, seq(0, nA+nZ)) // runs straight from one range into the next
			b := srvTouch(private, seq(0, nP))
			srvWait(t, a, "toucher A")
			srvWait(t, b, "toucher B")
			srvStopOK(t, stop)
			for _, c := range []struct {
				a    uintptr
				n    int
				seed byte
				zero bool
			}{{shared, nA, 1, false}, {zeros, nZ, 0, true}, {private, nP, 2, false}} {
				if err := srvVerify(c.a, c.n*srvPage, c.seed, c.zero, 0); err != nil {
					t.Error(err)
				}
				st := statsAt(t, s, c.a)
				if st.Bytes != uint64(c.n*srvPage) {
					t.Errorf("range %#x: %d bytes resolved, want %d (each page exactly once)", c.a, st.Bytes, c.n*srvPage)
				}
				if st.Missing == 0 || st.Missing+st.AroundPages < uint64(c.n) {
					t.Errorf("range %#x: missing %d + around %d < %d pages", c.a, st.Missing, st.AroundPages, c.n)
				}
				if st.Latency.Count != st.Missing {
					t.Errorf("range %#x: %d latency samples for %d faults", c.a, st.Latency.Count, st.Missing)
				}
			}
		})
	}
}

// Many goroutines touch the same pages at once, in different orders: each page is copied
// exactly once, the losers of a race see EEXIST and are woken, nobody sees wrong data.
func TestServerConcurrentSamePages(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ServerOption
	}{
		{"1-worker", nil},
		{"2-workers-no-around", []ServerOption{WithWorkers(2), WithoutFaultAround()}},
		{"4-workers", []ServerOption{WithWorkers(4)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx, done := srvFixture(t, FeatureMissingShmem, 0, 0)
			defer done()
			u := fx.u
			const pages, touchers = 256, 8
			a := srvShared(t, pages*srvPage)
			defer srvUnmap(t, a, pages*srvPage)
			srvRegister(t, u, a, pages*srvPage, ModeMissing)
			s := NewServer(u, tc.opts...)
			srvHandle(t, s, a, pages*srvPage, pattern{seed: 9})
			stop, _ := srvStart(t, s)
			var chans []<-chan int
			for g := 0; g < touchers; g++ {
				order := seq(0, pages)
				switch g % 3 {
				case 1:
					rand.New(rand.NewSource(int64(g))).Shuffle(pages, func(i, j int) { order[i], order[j] = order[j], order[i] })
				case 2:
					for i, j := 0, pages-1; i < j; i, j = i+1, j-1 {
						order[i], order[j] = order[j], order[i]
					}
				}
				chans = append(chans, srvTouch(a, order))
			}
			want := 0
			for p := 0; p < pages; p++ {
				want += int(patternByte(9, int64(p*srvPage)))
			}
			for g, c := range chans {
				if got := srvWait(t, c, "toucher"); got != want {
					t.Errorf("toucher %d: sum %d, want %d", g, got, want)
				}
			}
			srvStopOK(t, stop)
			srvExpect(t, a, pages*srvPage, 9, 0)
			st := statsAt(t, s, a)
			if st.Bytes != pages*uint64(srvPage) {
				t.Errorf("%d bytes copied, want %d: a page was copied twice or never", st.Bytes, pages*srvPage)
			}
			t.Logf("missing %d eexist %d around %d wakes %d latency %v", st.Missing, st.EEXIST, st.AroundPages, st.Wakes, &st.Latency)
		})
	}
}

// One shmem object seen at two addresses (the second made with the mremap duplicate): a page is
// filled once whatever view faults first; waiters on the other view are woken; a view
// registered MINOR sees the pages filled through the other one as minor faults.
func TestServerHandleViews(t *testing.T) {
	srvNeed(t, FeatureMinorShmem, "UFFD_FEATURE_MINOR_SHMEM (5.14+)")
	const pages = 128
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureMinorShmem|FeatureEventRemove, pages, 0)
	defer done()
	a, b, n := fx.a, fx.dup(t), fx.n
	defer srvUnmap(t, b, n)
	fx.register(t, ModeMissing|ModeMinor, a, b)
	s := NewServer(fx.u)
	if err := s.HandleViews(n, pattern{seed: 3}, a, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(b+uintptr(srvPage), srvPage, nil); err == nil {
		t.Fatal("Handle over a handled view succeeded")
	}
	stop, _ := srvStart(t, s)

	// Through A only: B's waiters are woken for every window copied into A.
	srvWait(t, srvTouch(a, seq(0, pages)), "toucher A")
	stop.settle(t)
	stA, stB := statsAt(t, s, a), statsAt(t, s, b)
	if stA.Bytes != uint64(n) || stA.Missing == 0 {
		t.Errorf("view A after touching A: %+v", stA)
	}
	if stB.Wakes == 0 || stB.Missing != 0 || stB.Minor != 0 {
		t.Errorf("view B after touching A: wakes %d missing %d minor %d, want wakes > 0 and no faults", stB.Wakes, stB.Missing, stB.Minor)
	}
	// Then through B: every page is in the page cache, B faults MINOR, CONTINUE maps it.
	srvWait(t, srvTouch(b, seq(0, pages)), "toucher B")
	stop.settle(t)
	stB = statsAt(t, s, b)
	if stB.Minor == 0 || stB.Missing != 0 || stB.Bytes != uint64(n) {
		t.Errorf("view B after touching B: minor %d missing %d bytes %d, want minor > 0, missing 0, bytes %d", stB.Minor, stB.Missing, stB.Bytes, n)
	}
	srvExpect(t, b, n, 3, 0)

	// Free the pages (MADV_REMOVE through A frees them for both views) and race both views
	// from several goroutines: each page is copied once more, never twice.
	srvMadvise(t, a, n, unix.MADV_REMOVE)
	var chans []<-chan int
	for g := 0; g < 6; g++ {
		view := a
		if g%2 == 1 {
			view = b
		}
		order := seq(0, pages)
		if g >= 2 {
			rand.New(rand.NewSource(int64(g))).Shuffle(pages, func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		chans = append(chans, srvTouch(view, order))
	}
	for _, c := range chans {
		srvWait(t, c, "racing toucher")
	}
	srvStopOK(t, stop)
	srvExpect(t, a, n, 3, 0)
	srvExpect(t, b, n, 3, 0)
	stA, stB = statsAt(t, s, a), statsAt(t, s, b)
	copied := stA.Bytes + stB.Bytes - uint64(n) /* phase 2 CONTINUE */ - uint64(n) /* phase 1 */
	// CONTINUE after the remove also counts in Bytes; only copies are bounded exactly, so
	// count the pages both views hold: each was filled once, and mapped at most once per view.
	if copied < uint64(n) || copied > 2*uint64(n) {
		t.Errorf("after remove: %d bytes resolved through both views, want between %d and %d", copied, n, 2*n)
	}
	srvOne(t, "removes", s.ServerStats().Removes)
}

// Views registered MISSING only: pages filled through one view are mapped in the other by the
// kernel without a fault, which the server accepts (nothing to count, nothing to serve).
func TestServerHandleViewsMissingOnly(t *testing.T) {
	const pages = 32
	fx, done := srvFixture(t, FeatureMissingShmem, pages, 0)
	defer done()
	a, b, n := fx.a, fx.dup(t), fx.n
	defer srvUnmap(t, b, n)
	fx.register(t, ModeMissing, a, b)
	s := NewServer(fx.u, WithoutFaultAround())

	if err := s.HandleViews(n, pattern{seed: 4}, a, b); err != nil {
		t.Fatal(err)
	}
	stop, _ := srvStart(t, s)
	srvWait(t, srvTouch(a, seq(0, pages/2)), "A first half")
	srvWait(t, srvTouch(b, seq(0, pages)), "B all")
	srvStopOK(t, stop)
	stA, stB := statsAt(t, s, a), statsAt(t, s, b)
	if stA.Missing != pages/2 || stB.Missing != pages/2 || stB.Minor != 0 {
		t.Errorf("A missing %d, B missing %d minor %d; want %d, %d, 0", stA.Missing, stB.Missing, stB.Minor, pages/2, pages/2)
	}
	srvExpect(t, a, n, 4, 0)
}

// Sequential access grows the window (1, 2, 4, ... pages up to the cap); random access stays at
// one page; a page already present in the middle of a window is skipped and the rest finished.
func TestServerFaultAround(t *testing.T) {
	const pages = 1024
	run := func(t *testing.T, opts []ServerOption, touches ...[]int) RangeStats {
		fx, done := srvFixture(t, FeatureMissingShmem, pages, ModeMissing)
		defer done()
		s, stop := fx.serve(t, pattern{seed: 5}, opts...)
		for _, p := range touches {
			srvWait(t, srvTouch(fx.a, p), "toucher")
		}
		srvStopOK(t, stop)
		fx.expect(t, 5)
		st := statsAt(t, s, fx.a)
		if st.Bytes != uint64(fx.n) {
			t.Errorf("%d bytes resolved, want %d", st.Bytes, fx.n)
		}

		return st
	}
	// Exact counts leave out stale faults: a thread waiting in a fault that the runtime's
	// preemption signal interrupts faults again, and its second message finds the page filled.
	t.Run("sequential", func(t *testing.T) {
		st := run(t, nil, seq(0, pages))
		// 1+2+...+512 = 1023 pages in 10 faults, then one more fault for the last page.
		if st.Missing-st.Stale != 11 || st.AroundPages != pages-11 {
			t.Errorf("missing %d (stale %d) around %d, want 11 and %d", st.Missing, st.Stale, st.AroundPages, pages-11)
		}
	})
	t.Run("sequential-cap-64k", func(t *testing.T) {
		st := run(t, []ServerOption{WithFaultAround(64 << 10)}, seq(0, pages))
		// 1+2+4+8 = 15 pages in 4 faults, then 16 pages per fault.
		want := uint64(4 + (pages-15+15)/16)
		if st.Missing-st.Stale != want {
			t.Errorf("missing %d (stale %d), want %d", st.Missing, st.Stale, want)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		st := run(t, []ServerOption{WithoutFaultAround()}, seq(0, pages))
		if st.Missing-st.Stale != pages || st.AroundPages != 0 {
			t.Errorf("missing %d (stale %d) around %d, want %d and 0", st.Missing, st.Stale, st.AroundPages, pages)
		}
	})
	t.Run("random", func(t *testing.T) {
		order := seq(0, pages)
		rand.New(rand.NewSource(1)).Shuffle(pages, func(i, j int) { order[i], order[j] = order[j], order[i] })
		st := run(t, nil, order)
		// A random order continues a stream now and then (the next page happens to follow);
		// nearly every fault must still resolve a single page.
		if st.Missing < pages*9/10 {
			t.Errorf("missing %d of %d pages: fault-around fired on random access", st.Missing, pages)
		}
	})
	t.Run("window-ends-on-present-pages", func(t *testing.T) {
		// Pages 64..127 first, in reverse (one page each), then 0, 1, 3, 7, ... : the window
		// [63, 127) meets 8 present pages in a row and stops there instead of skipping 63.
		var present []int
		for p := 127; p >= 64; p-- {
			present = append(present, p)
		}
		st := run(t, nil, present, seq(0, pages))
		if st.EEXIST-st.Stale != maxSkipped {
			t.Errorf("eexist %d (stale %d), want %d", st.EEXIST, st.Stale, maxSkipped)
		}
	})
	t.Run("eexist-mid-window", func(t *testing.T) {
		// Page 5 first (its own stream), then 0, 1, 3...: the window [3, 7) meets page 5.
		st := run(t, nil, []int{5}, seq(0, pages))
		if st.EEXIST-st.Stale != 1 {
			t.Errorf("eexist %d (stale %d), want 1", st.EEXIST, st.Stale)
		}
	})
}

// Close unblocks a Serve parked in read(2) at once; cancelling the context does too.
func TestServerCloseWhileBlocked(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 4, 0)
	defer done()
	u := fx.u
	s := NewServer(u, WithWorkers(3))
	stop, errc := srvStart(t, s)
	// Serve is blocked (or about to be): nothing faults. Close must end it either way.
	srvStopOK(t, stop)
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Serve(context.Background()); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close: %v", err)
	}
	select {
	case err := <-errc:
		t.Errorf("Serve returned twice: %v", err)
	default:
	}

	s2 := NewServer(u)
	srvCancelStops(t, s2)
	// The UFFD is usable again afterwards: a new Serve of another server works.
	fx.register(t, ModeMissing, fx.a)
	_, stop3 := fx.serve(t, pattern{seed: 1})
	fx.touchAll(t)
	srvStopOK(t, stop3)
	fx.expect(t, 1)
	s2.Close()
}

// Two Serve calls on one server: one of them is refused.
func TestServerServeTwice(t *testing.T) {
	fx, done := srvFixture(t, 0, 0, 0)
	defer done()
	u := fx.u
	s := NewServer(u)
	c := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() { c <- s.Serve(context.Background()) }()
	}
	if err := srvWait(t, c, "one of two Serve calls"); !errors.Is(err, ErrServing) {
		t.Errorf("first Serve to return: %v, want ErrServing", err)
	}
	s.Close()
	if err := srvWait(t, c, "the other Serve"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v, want ErrServerClosed", err)
	}
}

// Bad arguments are refused with a message that says what is wrong.
func TestServerHandleRefuses(t *testing.T) {
	fx, done := srvFixture(t, 0, 0, 0)
	defer done()
	u := fx.u
	s := NewServer(u)
	a := uintptr(1 << 40)
	srvHandle(t, s, a, 4*srvPage, nil)
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"zero length", s.Handle(a+(1<<20), 0, nil), "length must be positive"},
		{"unaligned addr", s.Handle(a+(1<<20)+1, srvPage, nil), "not page aligned"},
		{"unaligned length", s.Handle(a+(1<<20), srvPage+1, nil), "not a multiple of the page size"},
		{"overlap", s.Handle(a+uintptr(srvPage), srvPage, nil), "overlaps the handled range"},
		{"views overlap", s.HandleViews(2*srvPage, nil, a+(1<<20), a+(1<<20)+uintptr(srvPage)), "overlaps view"},
		{"no views", s.HandleViews(srvPage, nil), "no view given"},
		{"wraps", s.Handle(^uintptr(0)&^uintptr(srvPage-1), 2*srvPage, nil), "wraps around"},
	} {
		var re *RangeError
		if !errors.As(c.err, &re) || !contains(c.err.Error(), c.want) {
			t.Errorf("%s: %v, want a RangeError saying %q", c.name, c.err, c.want)
		}
	}
	if got := len(s.Stats()); got != 1 {
		t.Errorf("%d views after refusals, want 1", got)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// WithRegister registers the views itself.
func TestServerWithRegister(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 0, 0)
	defer done()
	u := fx.u
	n := 8 * srvPage
	a := srvShared(t, n)
	defer srvUnmap(t, a, n)
	s := NewServer(u, WithRegister(ModeMissing))
	srvHandle(t, s, a, n, pattern{seed: 6})
	stop, _ := srvStart(t, s)
	srvWait(t, srvTouch(a, seq(0, 8)), "toucher")
	srvStopOK(t, stop)
	if st := statsAt(t, s, a); st.Missing == 0 {
		t.Errorf("no fault served: %+v", st)
	}
	srvExpect(t, a, n, 6, 0)
	// A range the kernel cannot register is refused, with the kernel's reason: a hole this
	// test made in a reservation of its own, so that no other mapping can be there.
	hole := srvShared(t, 3*srvPage)
	defer srvUnmap(t, hole, 3*srvPage)
	srvUnmap(t, hole+uintptr(srvPage), srvPage)
	if err := s.Handle(hole+uintptr(srvPage), srvPage, nil); err == nil || !contains(err.Error(), "UFFDIO_REGISTER") {
		t.Errorf("Handle of unmapped memory with WithRegister: %v", err)
	}
}

// MADV_REMOVE frees served pages: the next touch faults MISSING again and is served again from
// the source (not with what was written before).
func TestServerRemoveRefires(t *testing.T) {
	const pages = 16
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventRemove, pages, ModeMissing)
	defer done()
	a, n := fx.a, fx.n
	s, stop := fx.serve(t, pattern{seed: 7}, WithoutFaultAround())
	srvWait(t, srvTouch(a, seq(0, pages)), "first touch")
	m := srvMem(a, n)
	for i := 0; i < n; i += srvPage {
		m[i]++ // resolved pages: no fault
	}
	srvMadvise(t, a, n, unix.MADV_REMOVE) // blocks until the server reads the event
	srvWait(t, srvTouch(a, seq(0, pages)), "second touch")
	srvStopOK(t, stop)
	fx.expect(t, 7)
	st := statsAt(t, s, a)
	if st.Missing != 2*pages || st.Bytes != 2*uint64(n) {
		t.Errorf("missing %d bytes %d, want %d and %d", st.Missing, st.Bytes, 2*pages, 2*n)
	}
	srvOne(t, "removes", s.ServerStats().Removes)
}

// munmap of part of a view drops that part (the rest keeps its offsets), and the hole can be
// handled again with another source.
func TestServerUnmapEvent(t *testing.T) {
	const pages = 16
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventUnmap, pages, ModeMissing)
	defer done()
	u, a, n := fx.u, fx.a, fx.n
	s, stop := fx.serve(t, pattern{seed: 8})
	hole := a + uintptr(4*srvPage)
	srvUnmap(t, hole, 4*srvPage) // blocks until the server reads the event
	stop.settle(t)
	srvOne(t, "unmaps", s.ServerStats().Unmaps)
	// Map the hole again, register, handle with another source.
	r, _, errno := unix.Syscall6(unix.SYS_MMAP, hole, uintptr(4*srvPage), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uintptr(0), 0)
	if errno != 0 || r != hole {
		t.Fatalf("mmap the hole: %v", errno)
	}
	srvRegister(t, u, hole, 4*srvPage, ModeMissing)
	if err := s.Handle(hole, 4*srvPage, pattern{seed: 80}); err != nil {
		t.Fatalf("Handle of the unmapped hole: %v", err)
	}
	srvWait(t, srvTouch(a, seq(0, pages)), "toucher")
	srvExpect(t, a, 4*srvPage, 8, 0)
	srvExpect(t, hole, 4*srvPage, 80, 0)
	srvExpect(t, a+uintptr(8*srvPage), 8*srvPage, 8, int64(8*srvPage))
	srvUnmap(t, a, n)
	fx.n = 0
	srvStopOK(t, stop)
	for _, st := range s.Stats() {
		if !st.Gone {
			t.Errorf("view %#x not gone after unmapping all: %+v", st.Addr, st)
		}
	}
}

// mremap moving a view: the server follows it, and faults at the new address are served with
// the right offsets.
func TestServerRemapMove(t *testing.T) {
	const pages = 16
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventRemap, pages, ModeMissing)
	defer done()
	a, n := fx.a, fx.n
	s, stop := fx.serve(t, pattern{seed: 10}, WithoutFaultAround())
	srvWait(t, srvTouch(a, seq(0, 4)), "toucher before move")
	dst := srvMap(t, n, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	r, _, errno := unix.Syscall6(unix.SYS_MREMAP, a, uintptr(n), uintptr(n), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst, 0)
	if errno != 0 {
		srvUnmap(t, dst, n)
		t.Fatalf("mremap move: %v", errno)
	}
	fx.a = r // the closer unmaps the range where it went

	srvWait(t, srvTouch(r, seq(0, pages)), "toucher after move")
	srvStopOK(t, stop)
	srvExpect(t, r, n, 10, 0)
	st := statsAt(t, s, a)
	if st.Missing != pages {
		t.Errorf("missing %d, want %d", st.Missing, pages)
	}
	srvOne(t, "remaps", s.ServerStats().Remaps)
}

// With EVENT_REMAP a duplicate made with mremap(old_size 0) stays registered; the server adds it
// as another view of the same source and serves its faults.
func TestServerRemapDuplicate(t *testing.T) {
	const pages = 16
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventRemap, pages, ModeMissing)
	defer done()
	a := fx.a
	s, stop := fx.serve(t, pattern{seed: 11}, WithoutFaultAround())
	// A duplicate of the upper half: its offset 0 is the object's offset 8 pages.
	d := srvDup(t, a+uintptr(8*srvPage), 8*srvPage) // blocks until the server reads the event
	defer srvUnmap(t, d, 8*srvPage)
	srvWait(t, srvTouch(d, seq(0, 8)), "toucher of the duplicate")
	srvWait(t, srvTouch(a, seq(0, pages)), "toucher of the original")
	srvStopOK(t, stop)
	srvExpect(t, d, 8*srvPage, 11, int64(8*srvPage))
	fx.expect(t, 11)
	stats := s.Stats()
	if len(stats) != 2 || stats[1].Addr != d || stats[1].View != -1 || stats[1].Object != stats[0].Object || stats[1].Len != 8*srvPage {
		t.Fatalf("stats %+v, want the duplicate as view -1 of object %d, 8 pages", stats, stats[0].Object)
	}
	if stats[1].Missing != 8 || stats[0].Missing != 8 {
		t.Errorf("duplicate missing %d, original %d, want 8 and 8", stats[1].Missing, stats[0].Missing)
	}
	srvOne(t, "duplicates", s.ServerStats().Duplicates)
}

// A fault on a registered range nobody handles stops Serve with ErrUnhandledFault; the faulting
// thread is not lost: once the range is handled a new Serve serves it.
func TestServerUnhandledFault(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 4, ModeMissing)
	defer done()
	fx.unhandledThenServed(t, NewServer(fx.u), 12)
}

var errBoom = errors.New("boom: the disk is gone")

// StopOnSourceError: Serve returns the source's error; the faulting thread is not given zeros,
// and a later Serve (the source healed) serves it.
func TestServerSourceErrorStops(t *testing.T) {
	const pages = 8
	fx, done := srvFixture(t, FeatureMissingShmem, pages, ModeMissing)
	defer done()
	a := fx.a
	src := &failing{pattern: pattern{seed: 13}, badOff: int64(5 * srvPage), err: errBoom}
	src.bad.Store(true)
	s := fx.server(t, src)
	_, errc := srvStart(t, s)
	touch := srvTouch(a, seq(0, pages))
	err := srvWait(t, errc, "Serve")
	var se *SourceError
	if !errors.As(err, &se) || !errors.Is(err, errBoom) || se.Addr != a+uintptr(5*srvPage) || se.Offset != int64(5*srvPage) {
		t.Fatalf("Serve: %v, want a SourceError for page 5 wrapping errBoom", err)
	}
	select {
	case <-touch:
		t.Fatal("the toucher finished past a page whose source failed")
	default:
	}
	src.bad.Store(false)
	stop, _ := srvStart(t, s)
	srvWait(t, touch, "toucher")
	srvStopOK(t, stop)
	fx.expect(t, 13)
	if st := statsAt(t, s, a); st.SourceErrors != 1 {
		t.Errorf("source errors %d, want 1", st.SourceErrors)
	}
}

// A source shorter than the range: the page holding its end is served with a zeroed tail, a
// page wholly past the end is a source error (io.ErrUnexpectedEOF), never zeros.
func TestServerSourceEOF(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 4, ModeMissing)
	defer done()
	a := fx.a
	size := int64(2*srvPage + 100)
	s := fx.server(t, pattern{seed: 14, size: size})
	_, errc := srvStart(t, s)
	srvWait(t, srvTouch(a, seq(0, 3)), "toucher of the first 3 pages")
	srvExpect(t, a, int(size), 14, 0)
	if err := srvVerify(a+uintptr(size), 3*srvPage-int(size), 0, true, 0); err != nil {
		t.Errorf("tail of the last page: %v", err)
	}
	touch := srvTouch(a, []int{3})
	err := srvWait(t, errc, "Serve")
	var se *SourceError
	if !errors.As(err, &se) || !errors.Is(err, io.ErrUnexpectedEOF) || se.Addr != a+uintptr(3*srvPage) {
		t.Fatalf("Serve: %v, want a SourceError at page 3 matching io.ErrUnexpectedEOF", err)
	}
	// Release the toucher: handled again by a server with a longer source.
	_, stop := fx.serve(t, pattern{seed: 14})
	srvWait(t, touch, "toucher of page 3")
	srvStopOK(t, stop)
	s.Close()
}

// PoisonOnSourceError: the faulting thread gets SIGBUS (a recoverable panic under
// SetPanicOnFault), the error goes to the handler, and serving goes on.
func TestServerSourceErrorPoisons(t *testing.T) {
	srvNeed(t, FeaturePoison, "UFFD_FEATURE_POISON (6.6+)")
	const pages = 8
	fx, done := srvFixture(t, FeatureMissingShmem|FeaturePoison, pages, ModeMissing)
	defer done()
	u, a, n := fx.u, fx.a, fx.n

	// Without the feature negotiated, Serve refuses the policy at once.
	u0 := srvUFFD(t, 0)
	if err := NewServer(u0, OnSourceError(PoisonOnSourceError)).Serve(context.Background()); !errors.Is(err, ErrNotSupported) {
		t.Errorf("Serve with PoisonOnSourceError on a userfaultfd without FeaturePoison: %v", err)
	}
	u0.Close()

	src := &failing{pattern: pattern{seed: 15}, badOff: int64(5 * srvPage), err: errBoom}
	src.bad.Store(true)
	var mu sync.Mutex
	var reported []error
	s := NewServer(u, OnSourceError(PoisonOnSourceError), WithoutFaultAround(), WithErrorHandler(func(err error) {
		mu.Lock()
		reported = append(reported, err)
		mu.Unlock()
	}))
	srvHandle(t, s, a, n, src)
	stop, _ := srvStart(t, s)
	faulted := make(chan any, 1)
	sums := make(chan int, 1) // the sum is used, so the loop cannot be optimised away
	go func() {
		debug.SetPanicOnFault(true)
		defer func() { faulted <- recover() }()
		m := srvMem(a, n)
		s := 0
		for i := 0; i < n; i += srvPage {
			s += int(m[i])
		}
		sums <- s
	}()
	if p := srvWait(t, faulted, "toucher"); p == nil {
		t.Fatal("the toucher read a page whose source failed without a fault")
	} else if _, ok := p.(runtime.Error); !ok {
		t.Fatalf("toucher panicked with %v, want a runtime memory fault", p)
	}
	srvWait(t, srvTouch(a, []int{6, 7}), "toucher after the poisoned page")
	srvStopOK(t, stop)
	srvExpect(t, a, 5*srvPage, 15, 0)
	st := statsAt(t, s, a)
	if st.Poisoned != 1 || st.SourceErrors != 1 {
		t.Errorf("poisoned %d source errors %d, want 1 and 1", st.Poisoned, st.SourceErrors)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 1 || !errors.Is(reported[0], errBoom) {
		t.Errorf("reported %v, want one error wrapping errBoom", reported)
	}
}

// Once warm, serving allocates nothing per fault.
func TestServerNoAllocPerFault(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	const pages = 512
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventRemove, pages, ModeMissing)
	defer done()
	a, n := fx.a, fx.n
	for _, tc := range []struct {
		name string
		opts []ServerOption
	}{{"4k", []ServerOption{WithoutFaultAround()}}, {"fault-around", nil}, {"2-workers", []ServerOption{WithWorkers(2), WithoutFaultAround()}}, {"no-spin", []ServerOption{WithoutSpin(), WithoutFaultAround()}}} {
		t.Run(tc.name, func(t *testing.T) {
			s, stop := fx.serve(t, pattern{seed: 16}, tc.opts...)
			defer func() { srvStopOK(t, stop) }()
			m := srvMem(a, n)
			touch := func() int {
				srvMadvise(t, a, n, unix.MADV_REMOVE)
				s := 0
				for i := 0; i < n; i += srvPage { // this goroutine faults; the server resolves
					s += int(m[i])
				}
				return s
			}
			srvSink += touch() // warm: buffers, first events
			before := s.Stats()[0]
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			srvSink += touch()
			runtime.ReadMemStats(&ms1)
			stop.settle(t)
			after := s.Stats()[0]
			faults := after.Missing - before.Missing
			allocs := ms1.Mallocs - ms0.Mallocs
			if faults == 0 {
				t.Fatal("no fault served")
			}
			// The madvise event and the runtime may allocate a few times per pass; per fault
			// it must be nothing.
			if allocs > 4 {
				t.Errorf("%d allocations for %d faults", allocs, faults)
			}
			t.Logf("%d faults, %d allocations", faults, allocs)
		})
	}
}
