package fault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// serveEngine is the serving loop of a handler process, for every source: the one Go engine
// (uffd.Server) with the shared block as its Tracker. Its garbage collector stops only this
// process, never the one whose faults it serves. src is the source built from a registered
// constructor, nil for the sources the handler reads itself (a descriptor, or zeros). It stops
// when the served process hangs up.
func serveEngine(hp *handlerProcess, src io.ReaderAt) int {
	c := &hp.c
	var stage *os.File
	if c.AliasFD >= 0 {
		stage = os.NewFile(uintptr(c.AliasFD), "alias")
	}
	// Without a named source, the handler process has nothing else to do: its workers wait
	// for faults in poll(2) on their own threads, woken by the fault itself rather than
	// through the scheduler. A named source is Go code that may wait in the runtime's poller
	// (a network source waits there for every answer), and workers blocked in poll(2) hold
	// the Ps: a goroutine whose answer has come then waits for the runtime's monitor to poll
	// the network, up to 10 ms later. Its workers park in the poller too (see uffdOptions).
	var extra []uffd.ServerOption
	if c.SourceName == "" {
		extra = append(extra, uffd.WithDirectReads())
	}
	srv, obs, srcMap, err := newEngine(hp.u, hp.b, c, src, stage, extra...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: %v\n", err)
		return 2
	}
	_ = srcMap // unmapped at exit
	if c.Role == "standby" {
		takeOver(hp.u, hp.b, c)
	}
	// The served process hangs up ParentFD to stop this handler, or by dying. It is watched
	// through the runtime poller: a goroutine blocked in poll(2) would hold a P, and with
	// every P held by a system call the runtime's monitor takes the serving worker's P away
	// at each fault, which then costs a futex wake and a reschedule per fault.
	unix.SetNonblock(c.ParentFD, true)
	parent := os.NewFile(uintptr(c.ParentFD), "parent")
	go func() {
		var b [1]byte
		for {
			if _, err := parent.Read(b[:]); err != nil {
				break
			}
		}
		srv.Close()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	restoreDone := startRestore(ctx, srv, hp.b, c)
	err = srv.Serve(ctx)
	cancel()
	<-restoreDone
	if err == nil || errors.Is(err, uffd.ErrServerClosed) {
		return 0
	}
	var serr *uffd.SourceError
	if errors.As(err, &serr) {
		obs.sourceError(serr)
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: %v; this kernel cannot poison the page (UFFDIO_POISON needs Linux 6.6), so the thread that touched it could never get its bytes: killing the served process %d\n", serr, os.Getppid())
	} else {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: serving stopped: %v; killing the served process %d\n", err, os.Getppid())
	}
	unix.Kill(os.Getppid(), unix.SIGABRT)
	return 3
}

// newEngine makes the server that serves c's views from src (nil: the source c names, read by
// the engine itself), recording into b; stage is the staging file (c.AliasFD), if any. It returns the mapping of a file source, if it made one,
// for the caller to unmap once the server is closed.
func newEngine(u *uffd.UFFD, b *block, c *procConfig, src io.ReaderAt, stage *os.File, extra ...uffd.ServerOption) (*uffd.Server, *blockObserver, []byte, error) {
	obs := newBlockObserver(b, c)
	opts := []uffd.ServerOption{
		uffd.WithFaultAround(max(c.MaxAround, 1) * c.Page),
		uffd.WithObserver(obs),
		uffd.WithWorkers(max(c.Workers, 1)),
	}
	opts = append(opts, extra...)
	if c.NoSpin {
		opts = append(opts, uffd.WithoutSpin())
	}
	if c.Restore.active() {
		opts = append(opts, uffd.WithPrefetch())
	}
	if c.Poison {
		// A failed read poisons the page in every view: the thread that touched it gets
		// SIGBUS, never zeros.
		opts = append(opts, uffd.OnSourceError(uffd.PoisonOnSourceError), uffd.WithErrorHandler(obs.sourceError))
	}
	var srcMap []byte
	switch {
	case src != nil:
		src = zerosPastEnd{src}
	case c.Source == SourceFD:
		fs := &fdSource{fd: c.SourceFD, off: c.SourceOff, len: c.SourceLen, sealed: shrinkSealed(c.SourceFD)}
		if c.AliasFD < 0 {
			fs.m = mapSource(c.Source, c.SourceFD, c.AliasFD, c.SourceOff, c.SourceLen, c.Len, c.Page)
			srcMap = fs.m
		}
		src = fs
	}
	if stage != nil {
		opts = append(opts, uffd.WithStaging(stage))
	}
	srv := uffd.NewServer(u, opts...)
	if err := srv.HandleViews(c.Len, src, c.Views...); err != nil {
		if srcMap != nil {
			unix.Munmap(srcMap)
		}
		return nil, nil, nil, err
	}
	return srv, obs, srcMap, nil
}

// takeOver is the first act of a standby that replaces a dead primary. The primary may have
// died holding a fault message it had read but not resolved: the thread of that fault waits
// until someone wakes it (a fault taken in user mode is retried after any signal, but one taken
// inside a system call is not), so every view is woken, and each thread still waiting faults
// again, sending a message this process reads. Pages the primary was filling are marked
// reset: whether they made it into memory is unknown, and either outcome is correct.
func takeOver(u *uffd.UFFD, b *block, c *procConfig) {
	if p := b.hdr(hInflight); p != 0 {
		first := int(p - 1)
		for i := first; i < first+int(b.hdr(hInflightPages)) && i < b.l.npages; i++ {
			// Filled too: the engine records a fill before its ioctl (its fast path).
			if st := b.state(i); st == stEmpty || st == stFilled {
				b.setState(i, stReset)
			}
		}
		b.setHdr(hInflight, 0)
	}
	for _, v := range c.Views {
		u.Wake(v, c.Len)
	}
}

// zerosPastEnd reads a Go source whose end (io.EOF) comes before the end of the views: the
// bytes past it are zeros, as documented for every source.
type zerosPastEnd struct{ src io.ReaderAt }

func (z zerosPastEnd) ReadAt(p []byte, off int64) (int, error) {
	n, err := z.src.ReadAt(p, off)
	switch {
	case n >= len(p):
		return len(p), nil
	case err == io.EOF: // the end, as io.ReaderAt says it; a wrapped EOF is a failure (a connection closed)
		clear(p[n:])
		return len(p), nil
	case err == nil:
		err = fmt.Errorf("short read of %d bytes with no error (an io.ReaderAt must return one): %w", n, io.ErrUnexpectedEOF)
	}
	return n, err
}

// fdSource is a file (or memfd) source: the bytes it had when serving began (len from off),
// then zeros. A read that comes up short of that length (the file shrank) is an error, never
// zeros. Where the file is mapped (m), the engine copies straight from the mapping.
type fdSource struct {
	fd  int
	off int64
	len int64
	m   []byte
	// sealed: the file is sealed against shrinking (see shrinkSealed), so the size check
	// after each read is skipped.
	sealed bool
}

// shrinkSealed reports whether file fd is sealed against shrinking (F_SEAL_SHRINK: memfds and
// other shmem files). Its size can then never drop below what it had when serving began (a seal
// is never removed), and a read cannot race a truncation: the fstat that guards against that
// race is a system call per fault, as costly as a 4 KiB pread on some machines.
func shrinkSealed(fd int) bool {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	return err == nil && seals&unix.F_SEAL_SHRINK != 0
}

func (s *fdSource) ReadAt(p []byte, off int64) (int, error) {
	have := 0
	if off < s.len {
		have = int(min(s.len-off, int64(len(p))))
	}
	for done := 0; done < have; {
		r, err := unix.Pread(s.fd, p[done:have], s.off+off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil || r == 0 {
			// A read error, or the source ended before the length it had when serving began
			// (it was truncated): never zeros in place of its bytes.
			if err == nil {
				err = unix.ENODATA
			}
			return done, err
		}
		done += r
	}
	if have > 0 && !s.sealed {
		// A read racing a truncation of a tmpfs file can return zeros for the pages the
		// truncation removed (the read takes no lock against it, and a hole reads as zeros).
		// The size is set before pages go, so the size after the read bounds what was read.
		var st unix.Stat_t
		if err := unix.Fstat(s.fd, &st); err != nil {
			return 0, err
		}
		if left := st.Size - s.off - off; left < int64(have) {
			return int(max(left, 0)), unix.ENODATA
		}
	}
	clear(p[have:])
	return len(p), nil
}

// Bytes lends [off, off+n) of the file's mapping. Only a file sealed against shrinking is
// mapped (see mapSource), so its bytes cannot go while they are copied: no size check is due.
func (s *fdSource) Bytes(off, n int64) []byte {
	if off+n > int64(len(s.m)) {
		return nil
	}
	return s.m[off : off+n]
}

// blockObserver records what the engine does in the shared block, the way native.c does.
type blockObserver struct {
	b      *block
	page   int64
	around uint64 // fault-around cap in pages, for the pages in flight
	staged bool   // missing pages are staged: a minor fault on a page not filled yet is normal

	// filling counts the missing faults being resolved. With several workers, a page may be
	// mapped by one worker's UFFDIO_COPY and not yet recorded when another worker takes up
	// a minor fault on it: a minor fault on a page not recorded as filled is a violation
	// only when no fill is in flight.
	filling atomic.Int64

	saved []uint8 // page states before the last Filling, for Unfilled
}

func newBlockObserver(b *block, c *procConfig) *blockObserver {
	return &blockObserver{b: b, page: int64(c.Page), around: uint64(max(c.MaxAround, 1)), staged: c.AliasFD >= 0}
}

func (o *blockObserver) Faulted(view int, off int64, flags uffd.PagefaultFlags) {
	o.b.addHdr(hMsgs, 1)
	p := int(off / o.page)
	switch {
	case flags&uffd.FlagWP != 0:
		o.b.addCtr(view, cWP, 1)
		if !o.b.dirty(view, p) {
			o.b.setDirty(view, p, true)
			o.b.addCtr(view, cDirty, 1)
		}
	case flags&uffd.FlagMinor != 0:
		o.b.addCtr(view, cMinor, 1)
		if o.b.state(p) == stEmpty && !o.staged && o.b.hdr(hTakeovers) == 0 && o.filling.Load() == 0 {
			o.violation(violMinorUnfilled, off)
		}
	default:
		o.b.addCtr(view, cMissing, 1)
		o.filling.Add(1)
		// Pages in flight: a standby that takes over from this process, should it die before
		// recording what it filled, must not take their later fills for invariant violations.
		o.b.setHdr(hInflightPages, o.around)
		o.b.setHdr(hInflight, uint64(p)+1)
	}
}

func (o *blockObserver) Resolved(view int, off, n int64, how uffd.Resolution) {
	pages := uint64(n / o.page)
	switch how {
	case uffd.Copied:
		o.b.addCtr(view, cCopied, pages)
	case uffd.Zeroed:
		o.b.addCtr(view, cZeroed, pages)
	case uffd.Staged: // written into the page cache; its CONTINUE is reported as Continued
		o.b.addCtr(view, cStaged, pages)
	case uffd.Continued:
		o.b.addCtr(view, cContinued, pages)
		return
	default:
		return
	}
	o.b.addCtr(view, cBytes, uint64(n))
	for p := int(off / o.page); p < int((off+n)/o.page) && p < o.b.l.npages; p++ {
		if st := o.b.state(p); st == stFilled || st == stPresent {
			o.violation(violTwice, int64(p)*o.page)
		}
		o.b.setState(p, stFilled)
	}
}

// Prefetching counts a prefetch fill in flight as a missing fault being resolved: a minor
// fault through another view may see its page before it is recorded.
func (o *blockObserver) Prefetching(start bool) {
	if start {
		o.filling.Add(1)
	} else {
		o.filling.Add(-1)
	}
}

func (o *blockObserver) Existed(view int, off int64) { o.b.addCtr(view, cEEXIST, 1) }

func (o *blockObserver) Filled(off int64) bool {
	p := int(off / o.page)
	if p >= o.b.l.npages {
		return false
	}
	st := o.b.state(p)
	return st == stFilled || st == stPresent
}

func (o *blockObserver) Protect(view int) bool { return o.b.hdr(hTracked)>>view&1 != 0 }

func (o *blockObserver) Removed(view int, off, n int64) {
	o.b.addHdr(hRemoves, 1)
	first, last := int(off/o.page), int((off+n+o.page-1)/o.page)
	for p := first; p < last && p < o.b.l.npages; p++ {
		o.b.setState(p, stReset)
	}
	o.record(Entry{View: view, Offset: off, Kind: KindRemove, Result: ResultReset, Pages: last - first})
}

// results maps the engine's resolutions to log results.
var results = [...]Result{uffd.Copied: ResultCopied, uffd.Zeroed: ResultZeroed, uffd.Continued: ResultContinued,
	uffd.Staged: ResultStaged, uffd.Existed: ResultExists, uffd.Unprotected: ResultUnprotected, uffd.Failed: ResultError}

func (o *blockObserver) Handled(h uffd.Handled) {
	e := o.entry(h)
	if e.Kind == KindMissing && h.Amend == 0 {
		o.b.setHdr(hInflight, 0)
		o.filling.Add(-1)
	}
	if e.Kind != KindWP && e.Pages > 1 {
		o.b.addCtr(h.View, cAround, uint64(e.Pages-1))
	}
	o.b.addCtr(h.View, cWakes, 1)
	if h.Amend != 0 {
		o.amend(h.Amend, e)
		return
	}
	o.record(e)
}

// entry is the log record of h.
func (o *blockObserver) entry(h uffd.Handled) Entry {
	e := Entry{View: h.View, Offset: h.Off, Thread: h.Thread, Kind: KindMissing, Pages: max(int(h.Len/o.page), 1)}
	switch {
	case h.Flags&uffd.FlagWP != 0:
		e.Kind = KindWP
	case h.Flags&uffd.FlagMinor != 0:
		e.Kind = KindMinor
	}
	if int(h.How) < len(results) {
		e.Result = results[h.How]
	}
	return e
}

// Filling records h before the engine's ioctl resolves it (its fast path: one worker, so one
// Filling at a time), as Resolved and Handled would after it. The page states it replaces are
// kept for Unfilled. The fault stays in flight for a standby (hInflight) until the next one.
func (o *blockObserver) Filling(h uffd.Handled) uint64 {
	e := o.entry(h)
	first, n := int(h.Off/o.page), int(h.Len/o.page)
	switch h.How {
	case uffd.Copied, uffd.Zeroed:
		o.saved = o.saved[:0]
		for p := first; p < first+n && p < o.b.l.npages; p++ {
			o.saved = append(o.saved, o.b.state(p))
		}
		o.Resolved(h.View, h.Off, h.Len, h.How)
	case uffd.Continued:
		o.b.addCtr(h.View, cContinued, uint64(n))
	}
	if e.Kind == KindMissing {
		o.filling.Add(-1)
	}
	if e.Kind != KindWP && n > 1 {
		o.b.addCtr(h.View, cAround, uint64(n-1))
	}
	o.b.addCtr(h.View, cWakes, 1)
	return o.record(e)
}

// Unfilled takes back what Filling recorded past the done bytes the ioctl resolved.
func (o *blockObserver) Unfilled(h uffd.Handled, token uint64, done int64) {
	sub := func(c int, x uint64) { o.b.addCtr(h.View, c, -x) }
	first, n := int(h.Off/o.page), int(h.Len/o.page)
	left := uint64(n - int(done/o.page))
	switch h.How {
	case uffd.Copied, uffd.Zeroed:
		c := cCopied
		if h.How == uffd.Zeroed {
			c = cZeroed
		}
		sub(c, left)
		sub(cBytes, uint64(h.Len-done))
		for i := int(done / o.page); i < n && i < len(o.saved); i++ {
			o.b.setState(first+i, o.saved[i])
		}
	case uffd.Continued:
		sub(cContinued, left)
	}
	if h.Flags&uffd.FlagWP == 0 && n > 1 {
		sub(cAround, uint64(n-1))
	}
	sub(cWakes, 1)
}

// record appends e to the log, if there is one, with the time. It returns the entry's index
// plus one (a token for amend), 0 without a log.
func (o *blockObserver) record(e Entry) uint64 {
	if o.b.l.logcap == 0 {
		return 0
	}
	i := o.b.nextHdr(hLogNext) // several workers record at once: each takes its own entry
	if i < uint64(o.b.l.logcap) {
		e.Time = monoNow()
		o.b.putEntry(int(i), e)
	}
	return i + 1
}

// amend replaces the entry that record's token names (if it was kept), keeping its time.
func (o *blockObserver) amend(token uint64, e Entry) {
	i := token - 1
	if o.b.l.logcap == 0 || i >= uint64(o.b.l.logcap) {
		return
	}
	e.Time = o.b.entry(int(i)).Time
	o.b.putEntry(int(i), e)
}

func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func (o *blockObserver) violation(code int, off int64) {
	if o.b.casHdr(hViolations, 0, 1) {
		o.b.setHdr(hViolOff, uint64(off))
		o.b.setHdr(hViolCode, uint64(code))
		return
	}
	o.b.addHdr(hViolations, 1)
}

// sourceError records a failed read of the source (its page poisoned by the server).
func (o *blockObserver) sourceError(err error) {
	var serr *uffd.SourceError
	if !errors.As(err, &serr) {
		return
	}
	var e unix.Errno
	errors.As(serr.Err, &e)
	o.b.setHdr(hErrOff, uint64(serr.Offset))
	o.b.setHdr(hErrno, uint64(e))
	if _, plain := serr.Err.(unix.Errno); !plain {
		o.b.putErrText(serr.Err.Error()) // a Go source's own words; an errno says it all
	}
	o.b.addHdr(hErrors, 1)
}
