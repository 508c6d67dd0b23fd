package uffd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// WithPrefetch lets Prefetch fill pages while Serve resolves faults. Under a Tracker it turns
// the one-ioctl fast path off (a fault's record must not run ahead of a fill that Prefetch may
// make first), which costs a demand fault one UFFDIO_WAKE more; and each missing fault tells
// the Prefetch calls running on its object where the program is (an atomic load, and while
// one runs, an uncontended lock and a look at its reads in flight).
func WithPrefetch() ServerOption { return func(c *serverConfig) { c.prefetch = true } }

// PrefetchRange is a run of bytes of a handled object (offset 0 is the start of every view),
// rounded out to whole pages by Prefetch.
type PrefetchRange struct {
	Off, Len int64
}

// PrefetchOptions tune Prefetch. Zero values select the defaults.
type PrefetchOptions struct {
	// InFlight caps the reads of the source made at once (default 8, at most
	// MaxPrefetchInFlight): a source that waits (a network round trip) is read for several
	// ranges in parallel. Below the cap, Prefetch
	// keeps only as many in flight as the source serves without their durations growing
	// (without a queue in front of it), as it measures them.
	InFlight int
	// MaxRange caps the bytes of one read (default 1 MiB, rounded down to pages): neighbouring
	// pages, consecutive in the order given, are read and filled together up to it. Below the
	// cap, Prefetch cuts its reads to the size that costs the source little more than a
	// page's read: a local source is read MaxRange at a time, a slow link in small chunks.
	MaxRange int
	// Rate caps the bytes read per second (0: no cap), for a background push that must leave
	// the link to others.
	Rate int64
	// MapFilled maps the pages that someone else filled (a demand fault, through one view)
	// into every view too, with UFFDIO_CONTINUE (a system call per run of them, and one per
	// page a view maps already), so that afterwards no view faults on any page of the ranges:
	// for a push to full residency. Without it such pages are skipped with no system call.
	MapFilled bool
}

// DefaultPrefetchInFlight and DefaultPrefetchRange are PrefetchOptions' defaults;
// MaxPrefetchInFlight is the most reads in flight an InFlight above it is taken for (each
// costs a goroutine and a buffer).
const (
	DefaultPrefetchInFlight = 8
	DefaultPrefetchRange    = 1 << 20
	MaxPrefetchInFlight     = 256
)

// PrefetchStats says what one Prefetch call did.
type PrefetchStats struct {
	Filled  int64 // pages this call filled (copied or zeroed)
	Skipped int64 // pages skipped with no system call: the Tracker knew them filled
	Existed int64 // pages that answered EEXIST: a demand fault or another view filled them first
	Reads   int64 // reads of the source
	Errors  int64 // reads that failed (their pages are left to demand faults)
	Mapped  int64 // pages mapped into the other views of the object (UFFDIO_CONTINUE)
	ReadErr error // the first read that failed (nil if none did)
}

// PrefetchObserver is an Observer told when Prefetch has a fill in flight: from before its
// UFFDIO_COPY until after the Resolved that reports it. A minor fault on a page of that fill
// may be taken up in between (another view touched it), before the page is recorded.
type PrefetchObserver interface {
	Prefetching(start bool)
}

// ErrViewGone is matched by the error of a Prefetch whose view was unmapped or unhandled.
var ErrViewGone = errors.New("uffd: Prefetch: the view went away")

// ErrNoPrefetch is returned by Prefetch on a server made without WithPrefetch.
var ErrNoPrefetch = errors.New("uffd: Prefetch needs a server made with WithPrefetch()")

// demandMissing resolves a missing fault, and tells the Prefetch calls running on the object
// where the program is: a fault on a page that they have yet to read makes them go on from
// there (see prefetch.jump).
func (s *Server) demandMissing(w *worker, o *outcome, tab *table, v *view, addr uintptr) error {
	if act := s.pf.active.Load(); act != nil && len(*act) > 0 {
		off := v.off + int64(addr-v.addr)
		if !s.pf.reading(v.obj, off) {
			for _, p := range *act {
				if p.obj == v.obj {
					p.demanded(off)
				}
			}
		}
	}
	return s.resolveMissing(w, o, tab, v, addr)
}

// prefetchGate is what demand faults and Prefetch share.
type prefetchGate struct {
	// stops are the cancels of the Prefetch calls running, under Server.mu: Close cancels
	// them with ErrServerClosed.
	stops map[*context.CancelCauseFunc]struct{}
	// active are the Prefetch calls running, for demand faults to tell them where the
	// program is: replaced, never changed in place, under Server.mu.
	active atomic.Pointer[[]*prefetch]

	nreads atomic.Int32 // len(reads)
	rmu    sync.Mutex
	reads  []pfRead // the reads of the source Prefetch is making, under rmu
}

// pfRead is a read of Prefetch in flight: bytes [off, end) of obj.
type pfRead struct {
	obj      *object
	off, end int64
}

// track records a Prefetch call and its cancel, for demand faults and Close; false if the
// server is closed.
func (g *prefetchGate) track(s *Server, p *prefetch, cancel *context.CancelCauseFunc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if g.stops == nil {
		g.stops = make(map[*context.CancelCauseFunc]struct{})
	}
	g.stops[cancel] = struct{}{}
	var act []*prefetch
	if old := g.active.Load(); old != nil {
		act = slices.Clone(*old)
	}
	act = append(act, p)
	g.active.Store(&act)
	return true
}

func (g *prefetchGate) untrack(s *Server, p *prefetch, cancel *context.CancelCauseFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(g.stops, cancel)
	if old := g.active.Load(); old != nil {
		act := slices.DeleteFunc(slices.Clone(*old), func(q *prefetch) bool { return q == p })
		g.active.Store(&act)
	}
}

// stopAll cancels every Prefetch call running. Called by Close, holding Server.mu.
func (g *prefetchGate) stopAll() {
	for c := range g.stops {
		(*c)(ErrServerClosed)
	}
}

// reading reports whether a read of Prefetch in flight fetches byte off of obj.
func (g *prefetchGate) reading(obj *object, off int64) bool {
	if g.nreads.Load() == 0 {
		return false
	}
	g.rmu.Lock()
	defer g.rmu.Unlock()
	for _, r := range g.reads {
		if r.obj == obj && r.off <= off && off < r.end {
			return true
		}
	}
	return false
}

// startRead records a read of Prefetch; the function returned forgets it.
func (g *prefetchGate) startRead(obj *object, off, n int64) func() {
	g.rmu.Lock()
	r := pfRead{obj, off, off + n}
	g.reads = append(g.reads, r)
	g.nreads.Add(1)
	g.rmu.Unlock()
	return func() {
		g.rmu.Lock()
		if i := slices.Index(g.reads, r); i >= 0 {
			g.reads = slices.Delete(g.reads, i, i+1)
		}
		g.nreads.Add(-1)
		g.rmu.Unlock()
	}
}

// Prefetch fills the pages of ranges, in the order given, ahead of the program, while Serve
// resolves demand faults: it returns when every page is filled (by it or by anyone else), ctx
// is done (ctx.Err()), the server is closed (ErrServerClosed), or the view went away, once
// its reads of the source in flight are over (a ReadAt that never returns keeps it, as a
// fault's read keeps Close; a read that comes back short is made again for the rest). view is
// the address of a view handled with Handle or HandleViews (the object's pages are filled
// through it and mapped into its other views with UFFDIO_CONTINUE where they are registered
// for minor faults); a page past the end of the object is ignored.
//
// Prefetch follows the program: a demand fault on a page that it has yet to read means the
// program got there first, so its next reads go on past that page, in the order given, and
// it comes back for the pages it skipped once the others are read (the faulting page is left
// to the fault). A program that overtakes it, or runs its recorded order with parts swapped,
// so has the pages it wants next read ahead of it again at once, rather than wait for each
// in a demand fault while the prefetch reads pages behind it.
//
// A demand fault goes first: Prefetch runs on goroutines of its own and keeps no standing
// queue in front of the source, so that a demand fault's read waits behind little. It adapts
// the size of its reads and how many are in flight to the durations it measures, keeping
// their queueing delay under half a page's read (see PrefetchOptions; a Rate-capped push does
// the same). A read it starts after a demand fault's is served after it by a source that
// serves requests in order; a demand fault's read still waits for the prefetch bytes already
// in flight. A demand fault on a page that one of its reads is fetching does not wait for
// that read: it reads the page itself at once, and whichever fill lands first serves it (the
// other meets EEXIST).
// A page the Tracker knows to be filled is skipped without a system call; EEXIST (a demand
// fault or another view was first) is not an error. A read that fails is counted and its
// pages left to demand faults, which apply the server's SourceErrorPolicy. The server must be
// made with WithPrefetch. Several Prefetch calls may run at once.
func (s *Server) Prefetch(ctx context.Context, view uintptr, ranges []PrefetchRange, o PrefetchOptions) (PrefetchStats, error) {
	var st PrefetchStats
	if !s.cfg.prefetch {
		return st, ErrNoPrefetch
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if o.InFlight <= 0 {
		o.InFlight = DefaultPrefetchInFlight
	}
	o.InFlight = min(o.InFlight, MaxPrefetchInFlight)
	if o.MaxRange <= 0 {
		o.MaxRange = DefaultPrefetchRange
	}
	o.MaxRange = max(o.MaxRange&^(s.page-1), s.page)
	if o.Rate < 0 {
		return st, fmt.Errorf("uffd: Prefetch: negative rate %d bytes/s", o.Rate)
	}
	tab := s.tab.Load()
	i := tab.find(view)
	if i < 0 || tab.views[i].addr != view || tab.views[i].off != 0 {
		return st, &RangeError{Op: "Prefetch", Addr: view, Why: "not the start of a handled view: pass an address given to Handle or HandleViews"}
	}
	length := tab.views[i].obj.length
	chunks := s.chunk(ranges, length, int64(o.MaxRange))
	if len(chunks) == 0 {
		return st, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p := &prefetch{s: s, view: view, obj: tab.views[i].obj, rate: o.Rate, chunks: chunks, left: len(chunks),
		mapFilled: o.MapFilled, win: newPrefetchWindow(int64(s.page), int64(o.MaxRange), o.InFlight)}
	p.wcond = sync.NewCond(&p.wmu)
	p.lastDemand = time.Now()
	p.index()
	if !s.pf.track(s, p, &cancel) {
		return st, ErrServerClosed
	}
	defer s.pf.untrack(s, p, &cancel)
	stopWin := context.AfterFunc(ctx, func() {
		p.wmu.Lock()
		p.wcond.Broadcast()
		p.wmu.Unlock()
	})
	defer stopWin()
	var total int64
	for _, c := range chunks {
		total += c.Len
	}
	var wg sync.WaitGroup
	workers := min(int64(o.InFlight), total/int64(s.page))
	for w := int64(0); w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.run(ctx, &worker{}); err != nil {
				p.fail(err)
				cancel(err)
			}
		}()
	}
	wg.Wait()
	st = p.stats()
	if p.err != nil {
		return st, p.err
	}
	return st, context.Cause(ctx)
}

// chunk turns ranges into page-aligned reads of at most max bytes inside [0, length),
// joining a range to the previous one where it starts right where that one ended.
func (s *Server) chunk(ranges []PrefetchRange, length, maxLen int64) []PrefetchRange {
	page := int64(s.page)
	var out []PrefetchRange
	for _, r := range ranges {
		lo := max(r.Off, 0) &^ (page - 1)
		hi := min(r.Off+r.Len, length)
		hi = (hi + page - 1) &^ (page - 1)
		hi = min(hi, (length+page-1)&^(page-1))
		for lo < hi {
			if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == lo && out[n-1].Len < maxLen {
				k := min(maxLen-out[n-1].Len, hi-lo)
				out[n-1].Len += k
				lo += k
				continue
			}
			k := min(maxLen, hi-lo)
			out = append(out, PrefetchRange{lo, k})
			lo += k
		}
	}
	return out
}

// prefetch is one Prefetch call's shared state.
type prefetch struct {
	s         *Server
	view      uintptr
	obj       *object // the object view mapped when Prefetch was called
	rate      int64
	chunks    []PrefetchRange
	mapFilled bool

	// The window (see prefetchWindow), the chunks still to read (a chunk's Off and Len
	// shrink from the front as pieces of it are taken), where the next piece is taken, and
	// the pieces being read, under wmu.
	wmu      sync.Mutex
	wcond    *sync.Cond // on wmu: a piece is done, or ctx is
	win      *prefetchWindow
	cur      int     // the next piece is taken from chunks[cur], or from the next chunk left
	left     int     // chunks with bytes left
	byOff    []int   // the call's chunks (not those split off later) by offset, for jump
	origOff  []int64 // their offsets when the call began, in the order of byOff
	inFlight int

	// demands are the offsets of the last demand faults on pages of the object that no read
	// of Prefetch was fetching, in a ring (fault k is at k%len), under dmu; ndemand counts
	// them, and seen those that take has looked at. A fault outside the ranges leaves the
	// prefetch where it is, so one such fault must not hide the one before it.
	dmu     sync.Mutex
	demands [8]int64
	ndemand uint64
	seen    uint64 // under wmu
	// lastDemand is when the last of them came (when the call began, before any), under
	// dmu: the window is quiet when none came for a while.
	lastDemand time.Time

	filled, skipped, existed, reads, errs, mapped atomic.Int64

	mu      sync.Mutex
	due     time.Time // Rate: when the next read may start
	err     error
	readErr error       // the first read that failed
	noCont  atomic.Bool // the other views are not registered for minor faults
}

func (p *prefetch) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func (p *prefetch) stats() PrefetchStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PrefetchStats{Filled: p.filled.Load(), Skipped: p.skipped.Load(), Existed: p.existed.Load(),
		Reads: p.reads.Load(), Errors: p.errs.Load(), Mapped: p.mapped.Load(), ReadErr: p.readErr}
}

// pace waits until a read of n bytes fits under the rate.
func (p *prefetch) pace(ctx context.Context, n int64) bool {
	if p.rate <= 0 {
		return true
	}
	p.mu.Lock()
	now := time.Now()
	if p.due.Before(now) {
		p.due = now
	}
	start := p.due
	p.due = p.due.Add(paceDelay(n, p.rate))
	p.mu.Unlock()
	if d := time.Until(start); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// paceDelay is how long n bytes take at rate bytes per second, computed without overflow
// (n * 1e9 overflows past about 9 GB) and held under a century.
func paceDelay(n, rate int64) time.Duration {
	const most = 100 * 365 * 24 * time.Hour
	if d := float64(n) / float64(rate) * float64(time.Second); d < float64(most) {
		return time.Duration(d)
	}
	return most
}

// take waits until the window has room for one more read, then takes the next piece of the
// chunks, of at most the window's chunk: in order, from where the program was last seen to
// fault (see jump). ok is false when none is left or ctx is done; otherwise the caller calls
// done when it is through with the piece.
func (p *prefetch) take(ctx context.Context) (ch PrefetchRange, ok bool) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	for p.inFlight > 0 && p.inFlight >= p.win.window() && ctx.Err() == nil && p.left > 0 {
		p.wcond.Wait()
	}
	if ctx.Err() != nil || p.left == 0 {
		p.wcond.Broadcast() // the other workers end too
		return ch, false
	}
	p.followDemand()
	if p.left == 0 { // the program faulted on the last page left
		p.wcond.Broadcast()
		return ch, false
	}
	for k := 0; p.chunks[p.cur].Len == 0; k++ { // ends at a chunk left: p.left > 0
		if k == len(p.chunks) { // none: p.left was wrong; never spin under wmu
			p.left = 0
			p.wcond.Broadcast()
			return ch, false
		}
		if p.cur++; p.cur == len(p.chunks) {
			p.cur = 0
		}
	}
	c := &p.chunks[p.cur]
	n := min(p.win.chunk(), c.Len)
	ch = PrefetchRange{c.Off, n}
	if c.Off, c.Len = c.Off+n, c.Len-n; c.Len == 0 {
		p.left--
	}
	p.inFlight++
	if p.inFlight < p.win.window() {
		p.wcond.Signal() // room for another read: pass it on
	}
	return ch, true
}

// demanded records a demand fault at off, for take to jump to.
func (p *prefetch) demanded(off int64) {
	now := time.Now()
	p.dmu.Lock()
	p.lastDemand = now
	p.ndemand++
	p.demands[p.ndemand%uint64(len(p.demands))] = off
	p.dmu.Unlock()
}

// followDemand jumps to the demand faults recorded since the last call, in order (the last
// one that has a page to read wins). Called under wmu.
func (p *prefetch) followDemand() {
	p.dmu.Lock()
	n := p.ndemand
	if n == p.seen {
		p.dmu.Unlock()
		return
	}
	ring := uint64(len(p.demands))
	k := max(p.seen+1, n-min(n, ring-1)) // the older ones are overwritten
	var buf [len(p.demands)]int64
	offs := buf[:0]
	for ; k <= n; k++ {
		offs = append(offs, p.demands[k%ring])
	}
	p.dmu.Unlock()
	p.seen = n
	for _, off := range offs {
		p.jump(off)
	}
}

// index sorts the chunks by offset, for jump.
func (p *prefetch) index() {
	p.byOff = make([]int, len(p.chunks))
	for i := range p.byOff {
		p.byOff[i] = i
	}
	slices.SortStableFunc(p.byOff, func(a, b int) int { return cmp.Compare(p.chunks[a].Off, p.chunks[b].Off) })
	p.origOff = make([]int64, len(p.byOff))
	for k, i := range p.byOff {
		p.origOff[k] = p.chunks[i].Off
	}
}

// jump makes the next piece start past the page at off, where the program faulted, if a
// chunk has that page still to read: the program is there, and wants the pages after it in
// the order next; the pages before it in the order are read after the others (the program
// went past them, or will come back to them later than it was recorded to): the part of the
// chunk before off becomes a chunk of its own, at the end. The faulting page itself is left
// to the fault; with MapFilled it goes with that part, to be mapped into every view once its
// fault has filled it.
//
// So a program that overtook the prefetch (it faulted on a page the prefetch had yet to
// read) has the prefetch read ahead of it again at once, rather than be served one demand
// fault at a time while the prefetch reads pages it went past; and one that runs its
// recorded order with runs swapped has the prefetch follow it. Called under wmu.
func (p *prefetch) jump(off int64) {
	page := int64(p.s.page)
	off &^= page - 1
	// The last chunk that began at or before off. With overlapping ranges, another one may
	// hold off while this one does not: then there is no jump.
	k, _ := slices.BinarySearch(p.origOff, off+1)
	if k == 0 {
		return
	}
	i := p.byOff[k-1]
	if c := p.chunks[i]; c.Len == 0 || off < c.Off || off >= c.Off+c.Len {
		return
	}
	// The faulting page is left to the fault; but one that MapFilled must map into every
	// view is kept, with the pages before it, for when its fault has filled it.
	head := off - p.chunks[i].Off
	if p.mapFilled {
		head += page
	}
	if head > 0 {
		p.chunks = append(p.chunks, PrefetchRange{p.chunks[i].Off, head})
		p.left++
	}
	c := &p.chunks[i]
	end := c.Off + c.Len
	c.Off = min(off+page, end)
	if c.Len = end - c.Off; c.Len == 0 {
		p.left--
	}
	p.cur = i
}

// done gives back the window's room taken by take, to one worker waiting for it.
//
// Room is handed on one worker at a time (take passes it on while the window has more):
// waking every worker at each read's end and each measurement, when the window holds a
// read or two, made the other workers (up to InFlight) wake and sleep again for nothing,
// twice a read, on the CPUs that serve the demand faults.
func (p *prefetch) done() {
	p.wmu.Lock()
	p.inFlight--
	p.wcond.Signal()
	p.wmu.Unlock()
}

// observe tells the window how long a read of n bytes took.
func (p *prefetch) observe(n int64, d time.Duration) {
	p.dmu.Lock()
	last := p.lastDemand
	p.dmu.Unlock()
	p.wmu.Lock()
	ref := p.win.pageRead()
	if ref == 0 {
		ref = d
	}
	p.win.quiet = time.Since(last) > quietReads*ref
	p.win.observe(n, d)
	p.wcond.Signal() // the window may have grown: take passes it on
	p.wmu.Unlock()
}

// run takes pieces of the chunks in order until none is left, filling the pages of each that
// are not known to be filled.
func (p *prefetch) run(ctx context.Context, w *worker) error {
	for {
		ch, ok := p.take(ctx)
		if !ok {
			return nil
		}
		// A worker's buffer holds the longest piece it took, not MaxRange: an absurd MaxRange
		// or InFlight costs no more memory than the reads made.
		if int64(len(w.buf)) < ch.Len {
			w.buf = make([]byte, ch.Len)
		}
		err := p.piece(ctx, w, ch)
		p.done()
		if err != nil {
			return err
		}
	}
}

// piece fills the pages of ch that are not known to be filled.
func (p *prefetch) piece(ctx context.Context, w *worker, ch PrefetchRange) error {
	s := p.s
	page := int64(s.page)
	for off := ch.Off; off < ch.Off+ch.Len; {
		// The next run of pages known to be filled: skipped, or mapped into every view.
		if s.tracker != nil && s.tracker.Filled(off) {
			end := off + page
			for end < ch.Off+ch.Len && s.tracker.Filled(end) {
				end += page
			}
			p.skipped.Add((end - off) / page)
			if p.mapFilled {
				if err := p.mapRun(off, end-off); err != nil {
					return err
				}
			}
			off = end
			continue
		}
		end := off + page
		for end < ch.Off+ch.Len && (s.tracker == nil || !s.tracker.Filled(end)) {
			end += page
		}
		if ctx.Err() != nil || !p.pace(ctx, end-off) {
			return nil
		}
		// A demand fault may have filled pages of the run while this waited for the rate:
		// reading them again would fetch them twice (the fill would only meet EEXIST).
		if s.tracker != nil && p.rate > 0 {
			if s.tracker.Filled(off) {
				continue
			}
			for k := off + page; k < end; k += page {
				if s.tracker.Filled(k) {
					end = k
					break
				}
			}
		}
		next, err := p.fillRun(ctx, w, off, end-off)
		if err != nil {
			return err
		}
		off = next // past the pages a short read did not bring: they are read again
	}
	return nil
}

// fillRun reads [off, off+n) of the object and fills it through the view. It returns where
// the pages it is through with end: off+n, or less after a short read, whose pages past the
// bytes read are still to be read.
func (p *prefetch) fillRun(ctx context.Context, w *worker, off, n int64) (int64, error) {
	s := p.s
	v, tab, err := p.lookup(off, n)
	if err != nil {
		return off, err
	}
	var b []byte
	if src := v.obj.src; src != nil {
		defer s.pf.startRead(v.obj, off, n)()
		p.reads.Add(1)
		t0 := time.Now()
		asked := n
		if b, n, err = s.read(w, src, off, n); err == nil {
			p.observe(asked, time.Since(t0))
		} else {
			p.errs.Add(1)
			p.mu.Lock()
			if p.readErr == nil {
				p.readErr = err
			}
			p.mu.Unlock()
			return off + asked, nil // demand faults meet the failure and apply the policy
		}
		// The view may have gone while the source was read, and its address been handled
		// again for another object: look again.
		if v, tab, err = p.lookup(off, n); err != nil {
			return off, err
		}
	}
	if ob, ok := s.cfg.observer.(PrefetchObserver); ok {
		ob.Prefetching(true)
		defer ob.Prefetching(false)
	}
	protect := s.tracker != nil && s.tracker.Protect(v.st.index)
	flags := DontWake
	if protect {
		flags |= WriteProtect
	}
	addr := v.addr + uintptr(off-v.off)
	page := int64(s.page)
	for done := int64(0); done < n; {
		var k int
		if b != nil {
			k, err = s.u.Copy(addr+uintptr(done), bufAddr(b, int(done)), int(n-done), flags)
		} else {
			k, err = s.u.ZeroPage(addr+uintptr(done), int(n-done), flags)
		}
		if k > 0 {
			p.filled.Add(int64(k) / page)
			how := Copied
			if b == nil {
				how = Zeroed
			}
			if ob := s.cfg.observer; ob != nil {
				ob.Resolved(v.st.index, off+done, int64(k), how)
			}
			v.st.live.bytes.Add(uint64(k))
			p.mapOthers(tab, v, off+done, int64(k), protect)
			p.wake(tab, v, off+done, int64(k))
			done += int64(k)
		}
		if err == nil {
			break
		}
		switch e := errnoOf(err); {
		case e == unix.EAGAIN:
			if k <= 0 {
				// An event is pending; Serve reads it. Let it.
				if !p.backoff(ctx) {
					return off + n, nil
				}
				if v, tab, err = p.lookup(off, n); err != nil { // events may have changed it
					return off, err
				}
				addr = v.addr + uintptr(off-v.off)
			}
		case e == unix.EEXIST:
			p.existed.Add(1)
			s.existed(v, addr+uintptr(done))
			if p.mapFilled {
				p.mapViews(tab, v, off+done, page, protect, true)
			}
			p.wake(tab, v, off+done, page) // a waiter may have raced the fill it met
			done += page
		case gone(e):
			return off, fmt.Errorf("%w (%#x)", ErrViewGone, p.view)
		default:
			return off, fmt.Errorf("uffd: Prefetch: filling %#x: %w", addr+uintptr(done), err)
		}
	}
	return off + n, nil
}

// backoff waits a little for a pending event to be read; false when ctx is done or the
// server closed.
func (p *prefetch) backoff(ctx context.Context) bool {
	p.s.mu.Lock()
	closed := p.s.closed
	p.s.mu.Unlock()
	if closed {
		p.fail(ErrServerClosed)
		return false
	}
	t := time.NewTimer(50 * time.Microsecond)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// lookup finds the part of the view Prefetch fills through that holds bytes [off, off+n) of
// the object, in the current table, and checks that it still maps them for the object Prefetch
// was called for: a view unhandled or unmapped, then its address handled again for another
// object (or cut short), must get none of the bytes read for the old one.
func (p *prefetch) lookup(off, n int64) (*view, *table, error) {
	tab := p.s.tab.Load()
	i := tab.find(p.view + uintptr(off)) // the part of the view left there, if cut by an unmap
	if i < 0 {
		return nil, nil, fmt.Errorf("%w (%#x is no longer handled)", ErrViewGone, p.view)
	}
	v := &tab.views[i]
	if v.obj != p.obj || v.addr-uintptr(v.off) != p.view || off+n > v.off+int64(v.end-v.addr) {
		return nil, nil, fmt.Errorf("%w (%#x no longer maps bytes [%d, %d) of the object)", ErrViewGone, p.view, off, off+n)
	}
	return v, tab, nil
}

// mapRun maps [off, off+n), filled by someone else, into every view, and wakes them.
func (p *prefetch) mapRun(off, n int64) error {
	v, tab, err := p.lookup(off, n)
	if err != nil {
		return err
	}
	protect := p.s.tracker != nil && p.s.tracker.Protect(v.st.index)
	p.mapViews(tab, v, off, n, protect, true)
	p.wake(tab, v, off, n)
	return nil
}

// mapOthers maps the pages just filled into the object's other views (UFFDIO_CONTINUE), so
// that touching them there does not fault either.
func (p *prefetch) mapOthers(tab *table, v *view, off, n int64, protect bool) {
	p.mapViews(tab, v, off, n, protect, false)
}

// mapViews maps [off, off+n) of the object into its other views, and into v too if self, with
// UFFDIO_CONTINUE, skipping pages mapped already. A view not registered for minor faults
// answers EINVAL: then no view is mapped any more.
func (p *prefetch) mapViews(tab *table, v *view, off, n int64, protect, self bool) {
	if p.noCont.Load() {
		return
	}
	s := p.s
	flags := DontWake
	if protect {
		flags |= WriteProtect
	}
	page := int64(s.page)
	views := v.siblings
	if self {
		views = append(slices.Clone(views), int32(tab.find(v.addr)))
	}
	for _, j := range views {
		sv := &tab.views[j]
		lo, hi := max(off, sv.off), min(off+n, sv.off+int64(sv.end-sv.addr))
		for lo < hi {
			k, err := s.u.Continue(sv.addr+uintptr(lo-sv.off), int(hi-lo), flags)
			if k > 0 {
				p.mapped.Add(int64(k) / page)
				if ob := s.cfg.observer; ob != nil {
					ob.Resolved(sv.st.index, lo, int64(k), Continued)
				}
				lo += int64(k)
			}
			if err == nil {
				break
			}
			switch e := errnoOf(err); {
			case e == unix.EEXIST:
				lo += page // mapped there already
			case e == unix.EAGAIN && k > 0:
			case e == unix.EINVAL:
				p.noCont.Store(true)
				return
			case e == unix.EFAULT:
				lo += page // not in the page cache (freed since): its own fault fills it
			default:
				lo = hi // an event came, or the view went: its own faults map the rest
			}
		}
	}
}

// wake wakes the waiters on [off, off+n) of every view of v's object.
func (p *prefetch) wake(tab *table, v *view, off, n int64) {
	p.s.u.Wake(v.addr+uintptr(off-v.off), int(n))
	p.s.wakeSiblings(tab, v, off, n)
}
