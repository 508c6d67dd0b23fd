package mirror

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
	"github.com/mirrormem/mirrormem/uffd"
)

// serving returns the pair's fault serving with the pair's read lock held (Close waits for it):
// on success the caller must call p.s.mu.RUnlock.
func (p *Pair) serving() (*serving, error) {
	p.s.mu.RLock()
	if p.s.closed.Load() {
		p.s.mu.RUnlock()
		return nil, ErrClosed
	}
	if p.s.faults == nil {
		p.s.mu.RUnlock()
		return nil, ErrNotServing
	}
	return p.s.faults, nil
}

// rlock takes the pair's read lock unless the pair is closed: on success the caller must call
// p.s.mu.RUnlock.
func (p *Pair) rlock() error {
	p.s.mu.RLock()
	if p.s.closed.Load() {
		p.s.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// FaultStats returns the faults served through the original and through the mirror so far
// (zero values for a pair made without ServeFaults). Safe to call while serving.
func (p *Pair) FaultStats() (original, mirror FaultStats) {
	return p.ViewFaultStats(0), p.ViewFaultStats(1)
}

// ViewFaultStats returns the faults served through view i (see Views).
func (p *Pair) ViewFaultStats(i int) FaultStats {
	sv, err := p.serving()
	if err != nil {
		return FaultStats{}
	}
	defer p.s.mu.RUnlock()
	return sv.stats(i)
}

// FaultHandler says who serves the pair's faults: HandlerNative, HandlerProcess or HandlerGo
// (HandlerAuto for a pair made without ServeFaults).
func (p *Pair) FaultHandler() Handler {
	sv, err := p.serving()
	if err != nil {
		return HandlerAuto
	}
	defer p.s.mu.RUnlock()
	return sv.kind
}

// FaultHandlerPids returns the process ids of the handler processes (HandlerProcess: the
// primary, then the standby that takes over if it dies), nil for other handlers.
func (p *Pair) FaultHandlerPids() []int {
	sv, err := p.serving()
	if err != nil {
		return nil
	}
	defer p.s.mu.RUnlock()
	if sv.h != nil && sv.kind == HandlerProcess {
		return sv.h.Pids()
	}
	return nil
}

// FaultErr returns nil while faults are served without trouble, or why they no longer can be
// (every handler process died, or the Go server stopped on an error), or, matching
// ErrSourceFailed, how many pages the source failed to read (those pages were poisoned: the
// threads that touch them get SIGBUS, never zeros).
func (p *Pair) FaultErr() error {
	sv, err := p.serving()
	if err != nil {
		return err
	}
	defer p.s.mu.RUnlock()
	return sv.err()
}

func (sv *serving) err() error {
	if sv.h != nil {
		if err := sv.h.Err(); err != nil {
			return err
		}
		if st := sv.h.Stats(); st.Errors > 0 {
			return fmt.Errorf("%w: %d source read error(s), their pages poisoned (touching them raises SIGBUS); last: %s", ErrSourceFailed, st.Errors, st.Error)
		}
		return nil
	}
	return nil
}

// FaultLog returns the VerifyFaults log so far (the first entries, up to the size given to
// VerifyFaults) and how many entries did not fit.
func (p *Pair) FaultLog() (events []FaultEvent, dropped uint64) {
	sv, err := p.serving()
	if err != nil {
		return nil, 0
	}
	defer p.s.mu.RUnlock()
	if sv.h == nil {
		return nil, 0
	}
	entries, dropped := sv.h.Log()
	events = make([]FaultEvent, len(entries))
	for i, e := range entries {
		events[i] = FaultEvent{Time: time.Duration(e.Time), View: e.View, Offset: int(e.Offset), Kind: e.Kind.String(),
			Result: e.Result.String(), Pages: e.Pages, Thread: e.Thread}
	}
	return events, dropped
}

// FaultReport describes the fault serving in a few printable lines: the handler, the counts
// per view, the invariants, source errors, the log's extent.
func (p *Pair) FaultReport() string {
	sv, err := p.serving()
	if err != nil {
		return "mirror: " + err.Error() + "\n"
	}
	defer p.s.mu.RUnlock()
	if sv.h != nil {
		return sv.h.Report()
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "fault handler (go, in-process uffd.Server serving a %s)\n", sv.srcKind)
	for i := range p.s.views {
		s := sv.stats(i)
		fmt.Fprintf(&b, "  view %d: missing %d, minor %d, wp %d; eexist %d; %d bytes\n", i, s.Missing, s.Minor, s.WP, s.Exists, s.Bytes)
	}
	return b.String()
}

// Verify checks that every page the pair filled holds its source's bytes (compared with the
// source's ReadAt, zeros past its end or for a nil source), through every view, on top of
// what VerifyHandler checks. A page written after it was filled differs from its source and
// is reported: call Verify on memory that is only read (a restored snapshot, a migrated
// image) or before writing, and VerifyHandler on memory that is written.
func (p *Pair) Verify() error {
	sv, err := p.serving()
	if err != nil {
		return err
	}
	defer p.s.mu.RUnlock()
	return errors.Join(p.verifyHandler(sv), p.verifySource(sv))
}

// VerifyHandler checks what the handler recorded and what the views show: no invariant
// violation (each page filled at most once, minor faults only on filled pages), no source
// error, the handler alive, and every filled page showing the same bytes through every view.
// It reads the filled pages of every view (served like any other access).
func (p *Pair) VerifyHandler() error {
	sv, err := p.serving()
	if err != nil {
		return err
	}
	defer p.s.mu.RUnlock()
	return p.verifyHandler(sv)
}

// filled reports whether page pg was filled (the handler's record; for the Go server, the
// page cache's).
func (p *Pair) filledPages(sv *serving) ([]bool, error) {
	page := mem.PageSize()
	out := make([]bool, p.s.n/page)
	if sv.h != nil {
		for pg := range out {
			out[pg] = sv.h.Filled(pg)
		}
		return out, nil
	}
	vec := make([]byte, len(out))
	if err := mem.Mincore(mem.Ptr(p.s.views[0]), uintptr(len(p.s.views[0])), vec); err != nil {
		return nil, fmt.Errorf("mirror: Verify: %w", err)
	}
	for pg, in := range vec {
		out[pg] = in&1 != 0
	}
	return out, nil
}

// verifySource compares every filled page of every view with the source, with plain loops
// (a Go server may serve these views: no runtime assembly on them).
func (p *Pair) verifySource(sv *serving) error {
	filled, err := p.filledPages(sv)
	if err != nil {
		return err
	}
	page := mem.PageSize()
	want := make([]byte, page)
	for pg, ok := range filled {
		if !ok {
			continue
		}
		clear(want)
		if sv.src != nil {
			k, err := sv.src.ReadAt(want, int64(pg*page))
			if err != nil && err != io.EOF { // a wrapped EOF is a failure, not the end
				return fmt.Errorf("mirror: Verify: reading the source at offset %d: %w", pg*page, err)
			}
			clear(want[k:])
		}
		for i, v := range p.s.views {
			b := v[pg*page : (pg+1)*page]
			for j := range want {
				if b[j] != want[j] {
					return fmt.Errorf("mirror: Verify: page at offset %d differs from its source through view %d (byte %d: %#x, source %#x): it was not filled from the source, or was written since",
						pg*page, i, j, b[j], want[j])
				}
			}
		}
	}
	return nil
}

func (p *Pair) verifyHandler(sv *serving) error {
	var errs []error
	if err := sv.err(); err != nil {
		errs = append(errs, err)
	}
	if sv.h == nil {
		return errors.Join(append(errs, p.compareViewsLoop())...)
	}
	st := sv.h.Stats()
	if st.Violations > 0 {
		errs = append(errs, fmt.Errorf("mirror: %d fault invariant violation(s); first: %s", st.Violations, st.Violation))
	}
	page := mem.PageSize()
	views := p.s.views
	// A page filled may still fault in a view: the first touch there, or after reclaim unmapped
	// it. With the server in this process (HandlerGo) that fault must not happen inside runtime
	// assembly (see the package doc), so the pages are compared with a plain loop.
	equal := bytes.Equal
	if sv.wd != nil {
		equal = equalLoop
	}
	for pg := 0; pg < p.s.n/page; pg++ {
		if !sv.h.Filled(pg) {
			continue
		}
		a := views[0][pg*page : (pg+1)*page]
		for i := 1; i < len(views); i++ {
			if !equal(a, views[i][pg*page:(pg+1)*page]) {
				errs = append(errs, fmt.Errorf("mirror: page at offset %d differs between view 0 and view %d", pg*page, i))
				break
			}
		}
	}
	return errors.Join(errs...)
}

// equalLoop is bytes.Equal with a plain loop, which the collector can interrupt in a fault.
func equalLoop(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// compareViewsLoop compares the resident pages of the views with plain loops (the Go server
// serves them: no runtime assembly on memory it serves).
func (p *Pair) compareViewsLoop() error {
	page := mem.PageSize()
	vec := make([]byte, p.s.n/page)
	if err := mem.Mincore(mem.Ptr(p.s.views[0]), uintptr(len(p.s.views[0])), vec); err != nil {
		return fmt.Errorf("mirror: Verify: %w", err)
	}
	for pg, in := range vec {
		if in&1 == 0 {
			continue
		}
		a := p.s.views[0][pg*page : (pg+1)*page]
		for i := 1; i < len(p.s.views); i++ {
			b := p.s.views[i][pg*page : (pg+1)*page]
			for j := range a {
				if a[j] != b[j] {
					return fmt.Errorf("mirror: page at offset %d differs between view 0 and view %d", pg*page, i)
				}
			}
		}
	}
	return nil
}

func (p *Pair) pageRange(op string, off, n int) error {
	page := mem.PageSize()
	if off < 0 || n <= 0 || off%page != 0 || n%page != 0 || off > p.s.n || n > p.s.n-off {
		return fmt.Errorf("%w: %s(%d, %d): want a non-empty page-aligned range inside the %d-byte view", ErrRange, op, off, n, p.s.n)
	}
	return nil
}

// Populate makes the pages [off, off+n) present in every view, served by the fault handler
// while the calling goroutine is inside a system call (MADV_POPULATE_READ, Linux 5.14+), where
// the garbage collector does not wait for it. This is the safe way to prepare pages that code
// will then touch with copy() and friends when a Go source serves the pair (see ServeFaults);
// it works with every handler. A later MADV_DONTNEED (Discard) or Reset undoes it.
func (p *Pair) Populate(off, n int) error {
	if p.s.closed.Load() {
		return ErrClosed
	}
	if err := p.pageRange("Populate", off, n); err != nil {
		return err
	}
	for i, v := range p.s.views {
		if err := mem.Madvise(mem.Ptr(v[off:off+n]), uintptr(n), unix.MADV_POPULATE_READ); err != nil {
			switch {
			case errors.Is(err, unix.EINVAL):
				return fmt.Errorf("%w: Populate: MADV_POPULATE_READ needs Linux 5.14: %w", ErrUnsupported, err)
			case errors.Is(err, unix.EHWPOISON):
				return fmt.Errorf("%w: Populate view %d: a page in [%d, +%d) is poisoned: its source failed (FaultErr says why): %w", ErrSourceFailed, i, off, n, err)
			case errors.Is(err, unix.EFAULT):
				return fmt.Errorf("mirror: Populate view %d: the fault was refused (a user-mode-only userfaultfd: see uffd.New), or the handler failed: %w", i, err)
			}
			return fmt.Errorf("mirror: Populate view %d: %w", i, err)
		}
	}
	return nil
}

// Reset frees the pages [off, off+n) (MADV_REMOVE): the memory returns to the unfilled state
// in every view, and the next touch through any view raises a missing fault again, served again
// from the source. (MADV_DONTNEED does not do this on shared memory: see Discard.)
func (p *Pair) Reset(off, n int) error {
	if err := p.rlock(); err != nil {
		return err
	}
	defer p.s.mu.RUnlock()
	if err := p.pageRange("Reset", off, n); err != nil {
		return err
	}
	if err := mem.Madvise(mem.Ptr(p.s.views[0][off:off+n]), uintptr(n), unix.MADV_REMOVE); err != nil {
		return fmt.Errorf("mirror: Reset: %w", os.NewSyscallError("madvise(MADV_REMOVE)", errors.Unwrap(err)))
	}
	return nil
}

// Discard drops view i's page-table entries for [off, off+n) (MADV_DONTNEED). On shared memory
// this frees nothing: the pages stay in the page cache with their contents (writes included),
// and the next touch through view i is a minor fault (counted as Minor), not a new fill. Use
// Reset to free pages.
func (p *Pair) Discard(i, off, n int) error {
	if err := p.rlock(); err != nil {
		return err
	}
	defer p.s.mu.RUnlock()
	if err := p.pageRange("Discard", off, n); err != nil {
		return err
	}
	if i < 0 || i >= len(p.s.views) {
		return fmt.Errorf("%w: Discard: view %d of %d", ErrRange, i, len(p.s.views))
	}
	if err := mem.Madvise(mem.Ptr(p.s.views[i][off:off+n]), uintptr(n), unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("mirror: Discard: %w", os.NewSyscallError("madvise(MADV_DONTNEED)", errors.Unwrap(err)))
	}
	return nil
}

// TrackDirty starts a new dirty-tracking epoch for view i: it forgets the pages recorded as
// dirty, write-protects the whole view, and from then on records each page written through
// view i (the first write of a page raises a write-protect fault, which the handler records
// and lifts). Write protection is per view: writes through other views are not seen unless
// they are tracked too. Needs TrackWrites and a handler outside Go.
func (p *Pair) TrackDirty(i int) error {
	sv, err := p.serving()
	if err != nil {
		return err
	}
	defer p.s.mu.RUnlock()
	if sv.mode&uffd.ModeWP == 0 {
		return fmt.Errorf("%w: TrackDirty: the pair was made without TrackWrites", ErrUnsupported)
	}
	if sv.h == nil {
		return fmt.Errorf("%w: TrackDirty needs a handler outside Go", ErrUnsupported)
	}
	if i < 0 || i >= len(p.s.views) {
		return fmt.Errorf("%w: TrackDirty: view %d of %d", ErrRange, i, len(p.s.views))
	}
	page := mem.PageSize()
	for pg := 0; pg < sv.n/page && !sv.asyncWP; pg++ {
		sv.h.ClearDirty(i, pg)
	}
	sv.h.SetTracked(i, true)
	if err := sv.u.WriteProtectRange(sv.views[i], sv.n, true, 0); err != nil {
		return fmt.Errorf("mirror: TrackDirty: %w", err)
	}
	return nil
}

// Dirty returns the offsets of the pages written through view i since TrackDirty(i), in
// increasing order (none for a view never tracked). With TrackWritesAsync it reads the pages' write-protect bits from
// /proc/self/pagemap.
func (p *Pair) Dirty(i int) ([]int, error) {
	sv, err := p.serving()
	if err != nil {
		return nil, err
	}
	defer p.s.mu.RUnlock()
	if sv.h == nil || i < 0 || i >= len(p.s.views) {
		return nil, fmt.Errorf("%w: Dirty(%d): needs TrackWrites, a handler outside Go and a view of the pair", ErrOption, i)
	}
	page := mem.PageSize()
	if !sv.h.Tracked(i) {
		return nil, nil // never tracked: nothing recorded
	}
	if sv.asyncWP {
		return pagemapDirty(sv.views[i], sv.n, page)
	}
	var offs []int
	for pg := 0; pg < sv.n/page; pg++ {
		if sv.h.Dirty(i, pg) {
			offs = append(offs, pg*page)
		}
	}
	return offs, nil
}

// pmUFFDWP is the pagemap bit of a page (or pte marker) that is userfaultfd write-protected.
const pmUFFDWP = 1 << 57

// pagemapDirty returns the offsets of the pages of [addr, addr+n) whose userfaultfd
// write-protection was lifted, by the kernel on their first write (WP_ASYNC).
func pagemapDirty(addr uintptr, n, page int) ([]int, error) {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return nil, fmt.Errorf("mirror: Dirty: %w", err)
	}
	defer f.Close()
	buf := make([]byte, n/page*8)
	if _, err := f.ReadAt(buf, int64(addr/uintptr(page))*8); err != nil {
		return nil, fmt.Errorf("mirror: Dirty: reading /proc/self/pagemap: %w", err)
	}
	var offs []int
	for pg := 0; pg < n/page; pg++ {
		if binary.LittleEndian.Uint64(buf[pg*8:])&pmUFFDWP == 0 {
			offs = append(offs, pg*page)
		}
	}
	return offs, nil
}
