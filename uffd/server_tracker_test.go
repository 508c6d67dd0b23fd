package uffd

import (
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// recTracker records what a Server tells its Tracker. It tracks nothing itself: Filled is
// always false, so the server meets pages that exist only through the kernel's answers.
type recTracker struct {
	mu                 sync.Mutex
	filling, unfilled  []Handled
	unfilledDone       []int64
	handled            []Handled
	resolved           map[int64]int // object offset -> times reported filled
	existed, protected int
}

func (r *recTracker) Faulted(view int, off int64, flags PagefaultFlags) {}
func (r *recTracker) Resolved(view int, off, n int64, how Resolution) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if how == Copied || how == Zeroed {
		for p := off; p < off+n; p += int64(srvPage) {
			r.resolved[p]++
		}
	}
}
func (r *recTracker) Existed(view int, off int64)    { r.mu.Lock(); r.existed++; r.mu.Unlock() }
func (r *recTracker) Filled(off int64) bool          { return false }
func (r *recTracker) Protect(view int) bool          { return false }
func (r *recTracker) Removed(view int, off, n int64) {}
func (r *recTracker) Handled(h Handled)              { r.mu.Lock(); r.handled = append(r.handled, h); r.mu.Unlock() }
func (r *recTracker) Filling(h Handled) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.filling = append(r.filling, h)
	if h.How == Copied || h.How == Zeroed {
		for p := h.Off; p < h.Off+h.Len; p += int64(srvPage) {
			r.resolved[p]++
		}
	}
	return uint64(len(r.filling))
}
func (r *recTracker) Unfilled(h Handled, token uint64, done int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unfilled = append(r.unfilled, h)
	r.unfilledDone = append(r.unfilledDone, done)
	for p := h.Off + done; p < h.Off+h.Len; p += int64(srvPage) {
		r.resolved[p]--
	}
}

// A Tracker's fast path records each fault before the ioctl; when the ioctl does less (a
// fault-around window meets a page that exists), the record is taken back past what was done,
// the slow path finishes the window, and the final record amends the first. Every page is
// reported filled exactly once and holds the source's bytes, or the bytes written before.
func TestServerTrackerFastAndSlowPaths(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem, 16, 0)
	defer done()
	a, n, pg := fx.a, fx.n, int64(srvPage)
	alias := fx.dup(t) // not registered: a write through it puts page 5 in the page cache
	defer srvUnmap(t, alias, n)
	srvMem(alias, n)[5*srvPage] = 99
	fx.register(t, ModeMissing, a)
	tr := &recTracker{resolved: map[int64]int{}}
	_, stop := fx.serve(t, pattern{seed: 4}, WithObserver(tr), WithFaultAround(8*srvPage))
	fx.touchAll(t)
	srvStopOK(t, stop)

	tr.mu.Lock()
	defer tr.mu.Unlock()
	// Windows of 1, 2, 4 and 8 pages: the third, [3, 7), meets page 5 after two pages.
	if len(tr.unfilled) != 1 || tr.unfilled[0].Off != 3*pg || tr.unfilledDone[0] != 2*pg {
		t.Fatalf("taken back: %+v after %v bytes; want the window at page 3, after 2 pages", tr.unfilled, tr.unfilledDone)
	}
	var amended *Handled
	for i := range tr.handled {
		if tr.handled[i].Amend != 0 {
			amended = &tr.handled[i]
		}
	}
	if len(tr.handled) != 1 || amended == nil || amended.Off != 3*pg || amended.Amend != 3 || amended.How != Copied {
		t.Errorf("slow-path records %+v: want one, amending the third fast record", tr.handled)
	}
	if len(tr.filling) != 5 {
		t.Errorf("%d fast records, want 5 (windows at pages 0, 1, 3, 7 and 15)", len(tr.filling))
	}
	for p := int64(0); p < int64(n); p += pg {
		want := 1
		if p == 5*pg {
			want = 0
		}
		if tr.resolved[p] != want {
			t.Errorf("page %d reported filled %d times, want %d", p/pg, tr.resolved[p], want)
		}
	}
	if tr.existed == 0 {
		t.Error("the existing page was not reported")
	}
	m := srvMem(a, n)
	for i := 0; i < n; i += srvPage {
		want := patternByte(4, int64(i))
		if i == 5*srvPage {
			want = 99
		}
		if m[i] != want {
			t.Errorf("page %d: %d, want %d", i/srvPage, m[i], want)
		}
	}
}

// orderTracker records, in order, the removals and the faults a Server reports. Its Removed
// takes a while (slowRemove), as a Tracker that writes states for a large range does: the
// window in which another worker could handle a fault read after the removal's event.
type orderTracker struct {
	recTracker
	mu2        sync.Mutex
	seq        []string
	slowRemove time.Duration
}

func (o *orderTracker) Faulted(view int, off int64, flags PagefaultFlags) {
	o.mu2.Lock()
	o.seq = append(o.seq, "fault")
	o.mu2.Unlock()
}

func (o *orderTracker) Removed(view int, off, n int64) {
	for t := time.Now(); time.Since(t) < o.slowRemove; {
	}
	o.mu2.Lock()
	o.seq = append(o.seq, "removed")
	o.mu2.Unlock()
}

// A fault raised after MADV_REMOVE returned is handled after its event is applied, whichever
// workers read the two: madvise returns once the event is read, and the refill that follows
// must not be recorded before the removal (a Tracker would see a page "filled twice").
func TestServerEventBeforeLaterFault(t *testing.T) {
	fx, done := srvFixture(t, FeatureMissingShmem|FeatureEventRemove, 1, ModeMissing)
	defer done()
	tr := &orderTracker{recTracker: recTracker{resolved: map[int64]int{}}, slowRemove: 2 * time.Millisecond}
	_, stop := fx.serve(t, pattern{seed: 3}, WithObserver(tr), WithWorkers(4), WithoutFaultAround())
	const rounds = 20
	for i := 0; i < rounds; i++ {
		srvWait(t, srvTouch(fx.a, []int{0}), "touch")
		srvMadvise(t, fx.a, fx.n, unix.MADV_REMOVE) // returns once a worker has read the event
	}
	srvWait(t, srvTouch(fx.a, []int{0}), "last touch")
	srvStopOK(t, stop)
	tr.mu2.Lock()
	defer tr.mu2.Unlock()
	want := []string{}
	for i := 0; i < rounds; i++ {
		want = append(want, "fault", "removed")
	}
	want = append(want, "fault")
	if !slices.Equal(tr.seq, want) {
		t.Errorf("order seen by the Tracker:\n%v\nwant each removal before the next fault:\n%v", tr.seq, want)
	}
	fx.expect(t, 3)
}
