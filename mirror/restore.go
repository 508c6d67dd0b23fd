package mirror

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"slices"
	"time"

	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/internal/mem"
	"github.com/mirrormem/mirrormem/uffd"
)

// WorkingSet is the pages a run of a program touched first, in the order it touched them,
// per view: what a snapshot restore prefetches on the next run (see Restore). Record it with
// Pair.WorkingSet after a run served with VerifyFaults, store it with MarshalBinary next to
// the snapshot, load it with UnmarshalBinary.
type WorkingSet struct {
	PageSize int   // bytes per page where it was recorded
	Size     int   // bytes of each view
	Runs     []Run // in the order first touched
}

// Run is a run of pages first touched through one view: pages Page to Page+Pages-1 (counted
// from the start of the view), filled by one fault (a fault-around window) or by faults in a row.
type Run struct {
	View  int
	Page  int
	Pages int
}

// Pages returns the pages first touched through view, in order.
func (ws *WorkingSet) Pages(view int) []int {
	var out []int
	for _, r := range ws.Runs {
		if r.View == view {
			for p := r.Page; p < r.Page+r.Pages; p++ {
				out = append(out, p)
			}
		}
	}
	return out
}

// Len returns the number of distinct pages in the working set, over every view.
func (ws *WorkingSet) Len() int {
	spans := make([]Run, 0, len(ws.Runs))
	for _, r := range ws.Runs {
		if r.Pages > 0 {
			spans = append(spans, r)
		}
	}
	slices.SortFunc(spans, func(a, b Run) int { return cmp.Compare(a.Page, b.Page) })
	n, end := 0, math.MinInt
	for _, r := range spans {
		if last := r.Page + r.Pages; last > end {
			n += last - max(r.Page, end)
			end = last
		}
	}
	return n
}

// ErrWorkingSet is matched by the errors of UnmarshalBinary for data that is not a working
// set this library can read, and of Restore for a working set that does not fit the pair.
var ErrWorkingSet = errors.New("mirror: bad working set")

// workingSetMagic opens the encoding; workingSetVersion is the only version written and read.
// maxWorkingSetPage and maxWorkingSetSize bound the page size and the view size a working set
// may have.
const (
	workingSetMagic   = "MMWS"
	workingSetVersion = 1
	maxWorkingSetPage = 1 << 30
	maxWorkingSetSize = 1 << 50
)

// MarshalBinary encodes the working set compactly: a magic and a version, the page size and
// view size, then each run as its view, the distance of its first page from the end of the
// previous run, and its length, in varints; a CRC-32 ends it. A working set of a few
// thousand scattered runs takes a few bytes per run.
func (ws *WorkingSet) MarshalBinary() ([]byte, error) {
	if err := ws.check(); err != nil {
		return nil, err
	}
	b := append([]byte(workingSetMagic), workingSetVersion)
	b = binary.AppendUvarint(b, uint64(ws.PageSize))
	b = binary.AppendUvarint(b, uint64(ws.Size))
	b = binary.AppendUvarint(b, uint64(len(ws.Runs)))
	prev := 0
	for _, r := range ws.Runs {
		b = binary.AppendUvarint(b, uint64(r.View))
		b = binary.AppendVarint(b, int64(r.Page-prev))
		b = binary.AppendUvarint(b, uint64(r.Pages-1))
		prev = r.Page + r.Pages
	}
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b)), nil
}

// UnmarshalBinary decodes what MarshalBinary encoded. Anything else (another version, a
// truncated or corrupted encoding, runs outside the view or overlapping another run of their
// view, a page size over 2^30 or a view size over 2^50) is an error matching ErrWorkingSet.
func (ws *WorkingSet) UnmarshalBinary(data []byte) error {
	bad := func(why string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrWorkingSet, fmt.Sprintf(why, args...))
	}
	if len(data) < len(workingSetMagic)+1+4 || !bytes.HasPrefix(data, []byte(workingSetMagic)) {
		return bad("not a working set (no %q header)", workingSetMagic)
	}
	if v := data[len(workingSetMagic)]; v != workingSetVersion {
		return bad("version %d; this library reads version %d", v, workingSetVersion)
	}
	body, sum := data[:len(data)-4], binary.LittleEndian.Uint32(data[len(data)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return bad("checksum mismatch: the data is truncated or corrupted")
	}
	rd := bytes.NewReader(body[len(workingSetMagic)+1:])
	uv := func() uint64 {
		v, err := binary.ReadUvarint(rd)
		if err != nil || v > 1<<62 {
			return 1<<64 - 1
		}
		return v
	}
	pageSize, size, n := uv(), uv(), uv()
	if pageSize > maxWorkingSetPage || size > maxWorkingSetSize {
		return bad("page size %d and view size %d: want at most %d and %d", pageSize, size, maxWorkingSetPage, maxWorkingSetSize)
	}
	out := WorkingSet{PageSize: int(pageSize), Size: int(size)}
	if n > uint64(rd.Len()) { // each run takes 3 bytes at least
		return bad("%d runs announced in %d bytes", n, rd.Len())
	}
	out.Runs = make([]Run, 0, n)
	prev := int64(0)
	for i := uint64(0); i < n; i++ {
		view := uv()
		d, err := binary.ReadVarint(rd)
		pages := uv()
		if err != nil || view > fault.MaxViews || pages > 1<<40 {
			return bad("run %d does not decode", i)
		}
		page := prev + d
		r := Run{View: int(view), Page: int(page), Pages: int(pages + 1)}
		out.Runs = append(out.Runs, r)
		prev = page + int64(r.Pages)
	}
	if rd.Len() != 0 {
		return bad("%d bytes after the last run", rd.Len())
	}
	if err := out.check(); err != nil {
		return err
	}
	*ws = out
	return nil
}

// check validates the working set on its own. A page is first touched once per view, so the
// runs of a view do not overlap: then Restore walks each page of the pair at most once per
// view, whatever the encoding.
func (ws *WorkingSet) check() error {
	if ws.PageSize <= 0 || ws.PageSize&(ws.PageSize-1) != 0 || ws.PageSize > maxWorkingSetPage ||
		ws.Size <= 0 || ws.Size%ws.PageSize != 0 || ws.Size > maxWorkingSetSize {
		return fmt.Errorf("%w: page size %d and view size %d: want a power of two up to 2^30 and a positive multiple of it up to 2^50", ErrWorkingSet, ws.PageSize, ws.Size)
	}
	npages := ws.Size / ws.PageSize
	for i, r := range ws.Runs {
		if r.View < 0 || r.View >= fault.MaxViews || r.Page < 0 || r.Pages <= 0 || r.Page > npages-r.Pages {
			return fmt.Errorf("%w: run %d (view %d, pages %d+%d) is outside the %d pages of a view", ErrWorkingSet, i, r.View, r.Page, r.Pages, npages)
		}
	}
	order := make([]int, len(ws.Runs)) // the runs' indices, by view and first page
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		a, b := ws.Runs[i], ws.Runs[j]
		return cmp.Or(cmp.Compare(a.View, b.View), cmp.Compare(a.Page, b.Page), cmp.Compare(i, j))
	})
	for k := 1; k < len(order); k++ {
		a, b := ws.Runs[order[k-1]], ws.Runs[order[k]]
		if a.View == b.View && b.Page < a.Page+a.Pages {
			return fmt.Errorf("%w: runs %d and %d of view %d overlap (a page is first touched once per view)", ErrWorkingSet, min(order[k-1], order[k]), max(order[k-1], order[k]), a.View)
		}
	}
	return nil
}

// WorkingSet returns the pages first touched through each view so far, in order, from the
// VerifyFaults log (the order the faults were recorded in: the order touched, except that a
// thread whose fault is interrupted by a signal may go on, and fault again, before that fault
// is recorded): the faulting page of every fault, with the pages its fault-around window
// filled (record with FaultAround(0) for the touched pages only). Pages filled by Restore's
// prefetch and push are not faults and are not recorded: record a run served on demand. The
// log costs one entry per fault (see VerifyFaults); it must have kept every fault of the run,
// or the working set would miss the later ones: then the error says how many were dropped.
func (p *Pair) WorkingSet() (*WorkingSet, error) {
	sv, err := p.serving()
	if err != nil {
		return nil, err
	}
	defer p.s.mu.RUnlock()
	if sv.h == nil {
		return nil, fmt.Errorf("%w: WorkingSet reads the fault log of VerifyFaults", ErrNotServing)
	}
	entries, dropped := sv.h.Log()
	if dropped > 0 {
		return nil, fmt.Errorf("%w: WorkingSet: %d faults did not fit the log of %d entries: raise VerifyFaults", ErrRange, dropped, len(entries))
	}
	if len(entries) == 0 && sv.h.LogCap() == 0 {
		return nil, fmt.Errorf("%w: WorkingSet reads the fault log: make the pair with VerifyFaults(n)", ErrOption)
	}
	page := mem.PageSize()
	npages := p.s.n / page
	ws := &WorkingSet{PageSize: page, Size: p.s.n}
	seen := make([][]bool, len(p.s.views))
	for _, e := range entries {
		if e.Kind != fault.KindMissing && e.Kind != fault.KindMinor || e.Result == fault.ResultError {
			continue
		}
		view := e.View
		if view >= len(p.s.views) {
			view = 0 // the caller's own mapping, counted as the original
		}
		if seen[view] == nil {
			seen[view] = make([]bool, npages)
		}
		first := int(e.Offset) / page
		for pg := first; pg < first+max(e.Pages, 1) && pg < npages; pg++ {
			if seen[view][pg] {
				continue
			}
			seen[view][pg] = true
			if n := len(ws.Runs); n > 0 && ws.Runs[n-1].View == view && ws.Runs[n-1].Page+ws.Runs[n-1].Pages == pg {
				ws.Runs[n-1].Pages++
				continue
			}
			ws.Runs = append(ws.Runs, Run{View: view, Page: pg, Pages: 1})
		}
	}
	return ws, nil
}

// RestoreOptions say what the fault engine fills besides the pages the program faults on.
type RestoreOptions struct {
	// WorkingSet is prefetched first, in its order, ahead of the program and in parallel with
	// its faults (nil: nothing). It must have been recorded on a pair of the same size.
	WorkingSet *WorkingSet
	// Push fills every page left after the working set, from the first page on, so that the
	// image becomes fully resident (see WaitResident).
	Push bool
	// HoldPush makes the push wait until Pair.StartPush: for a source that is complete only
	// later (a store that a pre-copy is still filling, a stream that must reach a point
	// first). The working set is prefetched at once all the same. Needs Push.
	HoldPush bool
	// PushRate caps what the push reads from the source, in bytes per second (0: no cap).
	// It needs Push: without it, Restore refuses it.
	PushRate int64
	// InFlight caps the reads of the source made at once (0: 8). A network source fetches
	// several ranges in parallel; below the cap, the engine keeps only as many in flight as
	// the source serves without queueing them (their durations do not grow), as it measures.
	InFlight int
	// MaxRange caps one read in bytes (0: 1 MiB): neighbouring pages, consecutive in the
	// working set, are fetched as one range. Below the cap, reads are cut to the size that
	// costs the source little more than a page's read (MaxRange for a local source, a few
	// pages over a slow link), so that a demand fault waits behind little.
	MaxRange int
}

// Restore makes the fault engine fill pages ahead of the program: the recorded working set
// first, in order, with several reads of the source in flight and neighbouring pages fetched as
// one range, then (Push) every page left at a bounded rate. The prefetch follows the program: a
// fault on a page it has yet to read makes it go on from there (the program got there first, or
// runs its recorded order with parts swapped), and come back for the pages it skipped. A demand
// fault goes first: a fault on a page being prefetched reads it at once rather than wait for
// the prefetch's read, and the engine keeps no standing queue of its reads in front of the
// source (it sizes its reads and how many are in flight from their measured durations, keeping
// their queueing delay under half a page's read), so a demand fault's read waits only for the
// prefetch bytes already in flight. Each page is filled once, whoever gets there first (EEXIST
// is not an error), and mapped into every view, so that a fully pushed pair faults no more. It
// works with every source. The C thread does not prefetch: with HandlerAuto the pair is served
// by the engine in a handler process instead (or in this process with HandlerGo);
// WithHandler(HandlerNative) is refused. Needs ServeFaults.
func Restore(o RestoreOptions) Option {
	return func(c *config) {
		var err error
		switch {
		case o.PushRate < 0 || o.InFlight < 0 || o.MaxRange < 0:
			err = fmt.Errorf("%w: Restore: negative PushRate, InFlight or MaxRange", ErrOption)
		case o.InFlight > 256:
			err = fmt.Errorf("%w: Restore: InFlight %d is more than 256 reads at once", ErrOption, o.InFlight)
		case o.HoldPush && !o.Push:
			err = fmt.Errorf("%w: Restore: HoldPush holds the push: set Push too", ErrOption)
		case o.PushRate > 0 && !o.Push:
			err = fmt.Errorf("%w: Restore: PushRate caps the push: set Push too", ErrOption)
		case o.WorkingSet != nil:
			err = o.WorkingSet.check()
		}
		c.faults.use("Restore", err)
		c.faults.restore = o
	}
}

// restoreConfig turns o into the engine's ranges for a pair of n bytes per view.
func restoreConfig(o RestoreOptions, n, nviews int) (fault.Restore, error) {
	r := fault.Restore{Push: o.Push, HoldPush: o.HoldPush, PushRate: o.PushRate, InFlight: o.InFlight, MaxRange: o.MaxRange}
	ws := o.WorkingSet
	if ws == nil {
		return r, nil
	}
	page := mem.PageSize()
	if ws.PageSize != page || ws.Size != n {
		return r, fmt.Errorf("%w: Restore: recorded with %d-byte pages on %d-byte views; this pair has %d-byte pages and %d-byte views", ErrWorkingSet, ws.PageSize, ws.Size, page, n)
	}
	seen := make([]bool, n/page)
	for _, run := range ws.Runs {
		if run.View >= nviews {
			return r, fmt.Errorf("%w: Restore: a run of view %d; this pair has %d views", ErrWorkingSet, run.View, nviews)
		}
		for pg := run.Page; pg < run.Page+run.Pages; pg++ {
			if seen[pg] {
				continue
			}
			seen[pg] = true
			off := int64(pg * page)
			if k := len(r.Prefetch); k > 0 && r.Prefetch[k-1].Off+r.Prefetch[k-1].Len == off {
				r.Prefetch[k-1].Len += int64(page)
				continue
			}
			r.Prefetch = append(r.Prefetch, uffd.PrefetchRange{Off: off, Len: int64(page)})
		}
	}
	return r, nil
}

// RestoreProgress says how much of a pair is resident.
type RestoreProgress struct {
	Resident   int  // pages filled (by faults, prefetch or push)
	Pages      int  // pages of a view
	Prefetched bool // Restore's working set is prefetched
	Pushed     bool // Restore's push is over: every page is filled and mapped into every view
	// Restored is how many pages the prefetch and the push filled themselves rather than a
	// demand fault, counted when each of them ends (the others were faulted in).
	Restored int

	pushing bool // Restore pushes: Done waits for Pushed
}

// Done reports whether every page is resident: after a push, when it is over (so that no view
// faults any more); without one, when every page is filled.
func (r RestoreProgress) Done() bool { return r.Pushed || r.Resident >= r.Pages && !r.pushing }

// RestoreProgress returns how many pages are filled so far, and how far Restore got. Safe to
// call while serving.
func (p *Pair) RestoreProgress() (RestoreProgress, error) {
	sv, err := p.serving()
	if err != nil {
		return RestoreProgress{}, err
	}
	defer p.s.mu.RUnlock()
	pr, _ := sv.progress()
	return pr, nil
}

func (sv *serving) progress() (RestoreProgress, error) {
	pr := RestoreProgress{Pages: sv.n / mem.PageSize(), pushing: sv.push}
	if sv.h == nil {
		return pr, nil
	}
	pr.Resident, pr.Restored = sv.h.FilledPages(), sv.h.Restored()
	st := sv.h.RestoreState()
	pr.Prefetched, pr.Pushed = st&fault.RestorePrefetched != 0, st&fault.RestorePushed != 0
	if st&fault.RestoreFailed != 0 {
		return pr, errors.New("mirror: Restore stopped on an error (the handler wrote it to standard error); demand faults still serve every page")
	}
	return pr, nil
}

// StartPush starts the push that Restore(RestoreOptions{Push: true, HoldPush: true}) held:
// from now on the handler fills every page left, as Push does. Call it once the source holds
// its final bytes; the handler sees it within about a millisecond (it sets a bit in memory
// shared with the handler, so no goroutine of this process has to run for it). A second call
// does nothing. It fails with ErrClosed after Close, and with ErrOption on a pair whose push
// was not held.
func (p *Pair) StartPush() error {
	sv, err := p.serving()
	if err != nil {
		return err
	}
	defer p.s.mu.RUnlock()
	if sv.h == nil || !sv.h.HoldsPush() {
		return fmt.Errorf("%w: StartPush starts a held push: make the pair with Restore(RestoreOptions{Push: true, HoldPush: true})", ErrOption)
	}
	sv.h.StartPush()
	return nil
}

// residentPoll is how often WaitResident looks at the handler's page states.
const residentPoll = 2 * time.Millisecond

// WaitResident waits until every page of the pair is resident (see RestoreProgress.Done:
// Restore with Push does that, once StartPush started a held push, and so does touching every
// page), ctx is done (ctx.Err()), the pair is closed (ErrClosed), Restore stopped on an error,
// or serving fails (FaultErr's error: a page the source could not read never becomes
// resident). It reads the handler's page states every few milliseconds; it never holds the
// pair, so Close does not wait for it.
func (p *Pair) WaitResident(ctx context.Context) error {
	t := time.NewTicker(residentPoll)
	defer t.Stop()
	for {
		sv, err := p.serving()
		if err != nil {
			return err
		}
		pr, rerr := sv.progress()
		ferr := sv.err()
		p.s.mu.RUnlock()
		switch {
		case pr.Done():
			return nil
		case ferr != nil:
			return ferr
		case rerr != nil:
			return rerr
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
