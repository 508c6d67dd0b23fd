package uffd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// worker is the per-goroutine state of Serve: its message buffers and its page buffer.
type worker struct {
	full  bool // the last read filled msgs: more may be pending
	msgs  []Msg
	extra []Msg      // messages read while draining events for an EAGAIN
	later []laterMsg // faults read while draining, resolved after the current batch
	buf   []byte
	spin  spinner // the adaptive spin before blocking (server_spin.go)
}

type laterMsg struct {
	m Msg
	t time.Time
}

// errRetry says a resolve met EAGAIN without progress: read the pending event, then retry.
var errRetry = errors.New("uffd: event pending")

// bufFor returns the worker's buffer for a window of n bytes (n <= the fault-around cap),
// growing it the first time a window needs more: a cap set high costs only what the windows
// served need.
func (s *Server) bufFor(w *worker, n int64) []byte {
	if int64(len(w.buf)) < n {
		size := max(2*int64(len(w.buf)), n)
		w.buf = alignedBuf(int(min(size, int64(s.cfg.aroundMax))))
	}
	return w.buf[:n]
}

func (s *Server) runWorker() {
	w := &worker{
		msgs:  make([]Msg, s.cfg.batch),
		extra: make([]Msg, s.cfg.batch),
		buf:   s.pool.get(),
	}
	defer func() { s.pool.put(w.buf) }() // the buffer it grew to
	if err := s.serveLoop(w); err != nil {
		s.fail(err)
	}
}

// serveLoop returns nil when told to stop, the fatal error otherwise.
func (s *Server) serveLoop(w *worker) error {
	for !s.stopping.Load() {
		var n int
		var err error
		if s.direct {
			n, err = s.readDirect(w)
		} else {
			n, err = s.readPolled(w)
		}
		if err != nil {
			if s.stopping.Load() {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return errors.New("uffd: the userfaultfd's read deadline was set by someone else while serving")
			}
			return fmt.Errorf("uffd: reading the userfaultfd: %w", err)
		}
		t := time.Now()
		for i := 0; i < n; i++ {
			if err := s.dispatch(w, &w.msgs[i], t); err != nil {
				s.requeue(w, w.msgs[i+1:n])
				return err
			}
		}
		for len(w.later) > 0 {
			l := w.later[0]
			copy(w.later, w.later[1:])
			w.later = w.later[:len(w.later)-1]
			if err := s.dispatch(w, &l.m, l.t); err != nil {
				s.requeue(w, nil)
				return err
			}
		}
	}
	return nil
}

// errStopped is what readDirect returns when Serve must stop.
var errStopped = errors.New("uffd: serving stopped")

// readDirect reads messages into w.msgs, waiting in poll(2) on this thread for a message or
// for the stop eventfd (WithDirectReads).
func (s *Server) readDirect(w *worker) (int, error) {
	pfd := [2]unix.PollFd{{Fd: int32(s.u.Fd()), Events: unix.POLLIN}, {Fd: int32(s.stopFD), Events: unix.POLLIN}}
	// After a batch that did not fill the buffer, nothing is likely pending: wait first,
	// saving a read(2) that would answer EAGAIN (system calls are the cost of a fault).
	wait := !w.full
	var t0 time.Time // when this wait began (zero: it has not)
	for {
		if !wait {
			n, read, err := s.tryRead(w.msgs)
			if n > 0 || err != nil {
				w.full = read == len(w.msgs)
				if n > 0 && !t0.IsZero() {
					d := time.Since(t0)
					w.spin.waited(d, false)
				}
				return n, err
			}
		}
		wait = false
		if s.stopping.Load() {
			return 0, errStopped
		}
		if t0.IsZero() {
			t0 = time.Now()
			if n, err := s.spinRead(w, t0); n > 0 || err != nil {
				w.full = n == len(w.msgs)
				return n, err
			}
		}
		if _, err := unix.Poll(pfd[:], -1); err != nil && err != unix.EINTR {
			return 0, os.NewSyscallError("poll", err)
		}
		switch {
		case pfd[1].Revents != 0:
			return 0, errStopped
		case pfd[0].Revents&unix.POLLNVAL != 0:
			return 0, errClosed
		case pfd[0].Revents&unix.POLLIN == 0 && pfd[0].Revents&unix.POLLERR != 0:
			// Someone made the userfaultfd blocking: make it non-blocking again, and wait
			// again (a blocking read here could not be stopped).
			if err := s.u.restoreNonblock(); err != nil {
				return 0, err
			}
		}
	}
}

// requeue wakes the threads of faults read but not resolved, when Serve stops on an error:
// they fault again, and their new messages wait in the kernel for the next Serve. Events among
// them are applied: they are not sent twice.
func (s *Server) requeue(w *worker, msgs []Msg) {
	for i := range msgs {
		s.requeueOne(&msgs[i])
	}
	for i := range w.later {
		s.requeueOne(&w.later[i].m)
	}
	w.later = w.later[:0]
}

func (s *Server) requeueOne(m *Msg) {
	if m.Event() == EventPagefault {
		s.u.Wake(m.Address()&^uintptr(s.page-1), s.page)
	} else {
		s.event(m)
	}
}

func (s *Server) dispatch(w *worker, m *Msg, t time.Time) error {
	if m.Event() == EventPagefault {
		return s.fault(w, m, t)
	}
	s.event(m)
	return nil
}

// tryRead reads what is pending into msgs without blocking, applies the events among them,
// and returns the rest, moved to the front of msgs, and how many messages it read. The read
// and the events are one step for every worker: a fault read after an event is then handled
// after it. With the events left to dispatch, a worker could read MADV_REMOVE's event (which
// lets madvise return), and another the fault of the touch that follows, then record the
// refill before the removal, a page "filled twice" that was not. A fork's event is left to
// dispatch: it runs the caller's WithForkHandler, which must not hold up every read.
func (s *Server) tryRead(msgs []Msg) (left, read int, err error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	read, err = s.u.TryReadMessages(msgs)
	if read > 0 {
		s.sstats.reads.Add(1)
		s.sstats.messages.Add(uint64(read))
	}
	for i := 0; i < read; i++ {
		if e := msgs[i].Event(); e != EventPagefault && e != EventFork {
			s.event(&msgs[i])
			continue
		}
		msgs[left] = msgs[i]
		left++
	}
	return left, read, err
}

// drain reads what is pending without blocking, handles the events and keeps the faults for
// later. It is called when a resolve returned EAGAIN: an event waits to be read.
func (s *Server) drain(w *worker) error {
	n, read, err := s.tryRead(w.extra)
	if err != nil {
		return err
	}
	if read == 0 {
		// The event is queued right after the kernel counts it, or another worker has read it
		// and is applying it: let that happen. Not blocking in read(2) here: another worker
		// may be parked there already and would take the event, leaving this one stuck.
		runtime.Gosched()
		return nil
	}
	t := time.Now()
	for i := 0; i < n; i++ {
		if w.extra[i].Event() == EventPagefault {
			w.later = append(w.later, laterMsg{w.extra[i], t})
		} else {
			s.event(&w.extra[i]) // a fork
		}
	}
	return nil
}

// outcome is what resolving one fault message did, for the Tracker and for the wakes that
// follow it.
type outcome struct {
	msg    *Msg       // the fault
	fast   bool       // resolved on the fast path: recorded and woken already
	tok    uint64     // the token of a fast path that fell back to the slow one (Handled.Amend)
	n      int64      // bytes the window reached from the faulting page (pages that existed included)
	filled int64      // bytes the ioctls of the window resolved
	how    Resolution // what was done
	own    int64      // bytes of the faulting view to wake from the faulting page (0: none)
	sib    int64      // bytes to wake at the same offset in the other views of the object
	woke   bool       // the resolving ioctl woke the faulting view already
}

// resolved records that n bytes from the faulting page were resolved by an ioctl made with
// s.rflags, which woke their waiters unless it was DontWake.
func (s *Server) resolved(o *outcome, n int64, how Resolution) {
	o.n, o.how, o.own = n, how, n
	o.woke = s.rflags&DontWake == 0
}

// exists records that the faulting page existed: its waiters must be woken explicitly.
func (s *Server) exists(o *outcome, v *view, addr uintptr) {
	s.existed(v, addr)
	st := &v.st.live
	st.eexist.Add(1)
	st.stale.Add(1)
	o.how, o.own, o.woke = Existed, int64(s.page), false
}

// fault resolves one page fault message.
func (s *Server) fault(w *worker, m *Msg, t time.Time) error {
	addr := m.Address() &^ uintptr(s.page-1)
	flags := m.Flags()
	var tok uint64 // a fast path's token, kept across retries (its record is amended)
	for try := 0; ; try++ {
		tab := s.tab.Load()
		i := tab.find(addr)
		if i < 0 {
			if tab.wasDropped(addr, t) {
				s.sstats.unhandled.Add(1)
				s.u.Wake(addr, s.page)
				return nil
			}
			s.sstats.unhandled.Add(1)
			s.u.Wake(addr, s.page) // it faults again and waits, its new message unread
			return fmt.Errorf("%w: %s: call Handle for every range registered on this userfaultfd", ErrUnhandledFault, m.String())
		}
		v := &tab.views[i]
		st := &v.st.live
		if try == 0 {
			if o := s.cfg.observer; o != nil {
				o.Faulted(v.st.index, v.off+int64(addr-v.addr), flags&(FlagMinor|FlagWP))
			}
			switch {
			case flags&FlagWP != 0:
				st.wp.Add(1)
			case flags&FlagMinor != 0:
				st.minor.Add(1)
			default:
				st.missing.Add(1)
			}
		}
		o := &outcome{msg: m, tok: tok}
		var err error
		switch {
		case flags&FlagWP != 0:
			err = s.resolveWP(o, v, addr)
		case flags&FlagMinor != 0:
			err = s.resolveMinor(o, v, addr)
		default:
			err = s.demandMissing(w, o, tab, v, addr)
		}
		tok = o.tok
		if err == errRetry {
			st.eagain.Add(1)
			if s.stopping.Load() {
				s.u.Wake(addr, s.page) // it faults again and waits for the next Serve
				return nil
			}
			if err := s.drain(w); err != nil {
				return err
			}
			continue
		}
		if err == nil {
			s.finish(o, tab, v, addr, m)
		}
		st.lat.observe(time.Since(t))
		return err
	}
}

// finish tells the Tracker what was done, then wakes the waiters: the faulting view's and, for
// pages filled, the other views'. This is the one wake policy of the library's handlers (see
// internal/fault's package documentation): records first, wakes second, every view.
func (s *Server) finish(o *outcome, tab *table, v *view, addr uintptr, m *Msg) {
	if o.fast {
		return
	}
	off := v.off + int64(addr-v.addr)
	if s.tracker != nil {
		n := o.n // an unprotected page
		if o.filled > 0 {
			n = o.filled // not the pages of the window that existed
		}
		s.tracker.Handled(Handled{View: v.st.index, Off: off, Len: n, Flags: m.Flags(), Thread: m.ThreadID(), How: o.how, Amend: o.tok})
	}
	if o.own > 0 && !o.woke {
		v.st.live.wakes.Add(1)
		s.u.Wake(addr, int(o.own))
	}
	if o.sib > 0 && len(v.siblings) > 0 {
		s.wakeSiblings(tab, v, off, o.sib)
	}
}

// fastPath reports whether a fault may take the fast path: a Tracker records it as done before
// the resolving ioctl, which then wakes the faulting thread itself (no DontWake, no UFFDIO_WAKE
// afterwards, no wake of the other views, whose blocked threads have queued messages of their
// own). Only with one worker, so that nothing else resolves while the record runs ahead, and
// only on the first try of a fault.
func (s *Server) fastPath(o *outcome) bool {
	return s.tracker != nil && s.cfg.workers == 1 && o.tok == 0 && !s.cfg.prefetch
}

// fastHandled is the record of a fault resolved on the fast path.
func (s *Server) fastHandled(o *outcome, v *view, addr uintptr, n int64, how Resolution) Handled {
	return Handled{View: v.st.index, Off: v.off + int64(addr-v.addr), Len: n, Flags: o.msg.Flags(), Thread: o.msg.ThreadID(), How: how}
}

// fastDone settles a fast path whose ioctl resolved k of h.Len bytes: done if all of them,
// else the record is taken back for the rest and the fault goes on the slow path.
func (s *Server) fastDone(o *outcome, h Handled, tok uint64, k int64) bool {
	if k >= h.Len {
		o.fast, o.n, o.how = true, h.Len, h.How
		return true
	}
	s.tracker.Unfilled(h, tok, max(k, 0))
	o.tok = max(tok, 1)
	return false
}

// errnoOf returns the errno inside an error of the binding, 0 if none.
func errnoOf(err error) unix.Errno {
	if se, ok := err.(*os.SyscallError); ok {
		if e, ok := se.Err.(unix.Errno); ok {
			return e
		}
	}
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// gone reports errors meaning the range is no longer there (unmapped, or the process exited).
func gone(e unix.Errno) bool { return e == unix.ENOENT || e == unix.ESRCH }

// plan returns the window to resolve at addr of v: the fault-around size for this fault, cut
// at the end of the view and of the object.
func (s *Server) plan(st *aroundState, v *view, addr uintptr) (off, n int64) {
	off = v.off + int64(addr-v.addr)
	page := int64(s.page)
	n = page
	if s.cfg.aroundMax > s.page {
		n = st.window(off, page, int64(s.cfg.aroundMax))
	}
	if rem := int64(v.end - addr); n > rem {
		n = rem
	}
	if rem := v.obj.length - off; n > rem {
		n = rem
	}
	if n < page {
		n = page
	}
	return off, n
}

// cutFilled ends a window of missing pages at off before the first page after the faulting one
// that the Tracker knows to be filled.
func (s *Server) cutFilled(off, n int64) int64 {
	if s.tracker == nil {
		return n
	}
	for p := int64(s.page); p < n; p += int64(s.page) {
		if s.tracker.Filled(off + p) {
			return p
		}
	}
	return n
}

// read reads the window [off, off+n) of src into the worker's buffer. It returns the bytes to
// serve: all of them; up to the source's end (io.EOF) rounded up to a page, the tail zeroed as
// a file mapping's; or the whole pages read before a failure. A failure before the end of the
// first page is an error, never zeros.
func (s *Server) read(w *worker, src io.ReaderAt, off, n int64) ([]byte, int64, error) {
	buf := s.bufFor(w, n)
	k, rerr := src.ReadAt(buf, off)
	if int64(k) >= n {
		return buf, n, nil
	}
	page := int64(s.page)
	switch {
	case rerr == io.EOF && k > 0:
		full := (int64(k) + page - 1) &^ (page - 1)
		clear(buf[k:full])
		return buf[:full], full, nil
	case int64(k) >= page:
		m := int64(k) &^ (page - 1) // the pages read are good; the rest will fault again
		return buf[:m], m, nil
	}
	if rerr == nil || rerr == io.EOF {
		rerr = io.ErrUnexpectedEOF
	}
	return nil, 0, rerr
}

// sourceBytes gets the n bytes at off of v's object for a missing fault at addr: lent by a
// MappedSource where it can (mapped), else read into the worker's buffer, got bytes of them
// (see read). errRetry: while the source was read, the view was unhandled (or unmapped) and
// its address handled again, for another object, so the bytes read are not that object's;
// the fault is tried again from the current table.
func (s *Server) sourceBytes(w *worker, tab *table, v *view, addr uintptr, off, n int64) (buf []byte, got int64, mapped bool, err error) {
	if ms, ok := v.obj.src.(MappedSource); ok && s.cfg.stage == nil {
		if b := ms.Bytes(off, n); int64(len(b)) >= n {
			return b[:n], n, true, nil
		}
	}
	if buf, got, err = s.read(w, v.obj.src, off, n); err == nil && s.tab.Load() != tab && !s.stillMaps(v, addr, got) {
		err = errRetry
	}
	return buf, got, false, err
}

func (s *Server) resolveMissing(w *worker, o *outcome, tab *table, v *view, addr uintptr) error {
	obj := v.obj
	off, planned := s.plan(&obj.missing, v, addr)
	n := s.cutFilled(off, planned)
	protect := s.tracker != nil && s.tracker.Protect(v.st.index)
	var buf []byte
	mapped := false
	switch {
	case obj.src != nil:
		var err error
		if buf, n, mapped, err = s.sourceBytes(w, tab, v, addr, off, n); err != nil {
			obj.missing.settle(off, planned, off)
			if err == errRetry {
				return err
			}
			return s.sourceError(o, tab, v, addr, off, err)
		}
	case protect || s.cfg.stage != nil:
		// UFFDIO_ZEROPAGE has no write-protect mode, and staging writes the zeros.
		buf = s.bufFor(w, n)
		clear(buf)
	}
	var done int64
	var err error
	if s.cfg.stage == nil && s.fastPath(o) && !s.tracker.Filled(off) {
		how := Copied
		if buf == nil {
			how = Zeroed
		}
		h := s.fastHandled(o, v, addr, n, how)
		tok := s.tracker.Filling(h)
		flags := ResolveFlags(0)
		if protect {
			flags |= WriteProtect
		}
		var k int
		if buf != nil {
			k, err = s.u.Copy(addr, bufAddr(buf, 0), int(n), flags)
		} else {
			k, err = s.u.ZeroPage(addr, int(n), flags)
		}
		if s.fastDone(o, h, tok, int64(k)) {
			s.account(&v.st.live, n)
			obj.missing.settle(off, planned, off+n)
			return nil
		}
		if k > 0 {
			// The pages copied stay copied and recorded: the slow path goes on from there.
			s.account(&v.st.live, int64(k))
			done = int64(k)
			o.filled = int64(k)
		}
		err = nil
	}
	if s.cfg.stage != nil {
		done, err = s.stage(o, tab, v, addr, buf, n, protect)
	} else {
		var more int64
		more, err = s.fill(o, v, addr, buf, done, n, protect, mapped)
		done += more
		if err == errMapFault {
			// The file shrank under its mapping: read what it still has.
			rbuf, k, rerr := s.read(w, obj.src, off+done, n-done)
			switch {
			case rerr != nil && done == 0:
				obj.missing.settle(off, planned, off)
				return s.sourceError(o, tab, v, addr, off, rerr)
			case rerr != nil:
				err = nil // the faulting page is resolved; the rest faults again
			default:
				var more int64
				more, err = s.fill(o, v, addr+uintptr(done), rbuf, 0, k, protect, false)
				done += more
			}
		}
	}
	if err != nil {
		return err
	}
	obj.missing.settle(off, planned, off+done)
	if done > 0 {
		if s.cfg.stage == nil { // stage reports its own outcome
			how := Copied
			if buf == nil {
				how = Zeroed
			}
			s.resolved(o, done, how)
		}
		o.sib = done
	}
	return nil
}

// stillMaps reports whether the current table maps [addr, addr+n) to the same bytes of the
// same object as v does.
func (s *Server) stillMaps(v *view, addr uintptr, n int64) bool {
	tab := s.tab.Load()
	i := tab.find(addr)
	if i < 0 {
		return false
	}
	nv := &tab.views[i]
	return nv.obj == v.obj && nv.addr-uintptr(nv.off) == v.addr-uintptr(v.off) && addr+uintptr(n) <= nv.end
}

// errMapFault says copying from a MappedSource's bytes faulted: the file shrank.
var errMapFault = errors.New("uffd: the source's mapping faulted")

// fill resolves [addr, addr+n) of v from buf (nil: zeros), finishing short copies and skipping
// pages that already exist. It returns how far the window got (0 if the faulting page existed).
// start bytes of the window are resolved already (by a fast path that fell short); the count
// returned is of the bytes after them.
func (s *Server) fill(o *outcome, v *view, addr uintptr, buf []byte, start, n int64, protect, mapped bool) (int64, error) {
	st := &v.st.live
	page := int64(s.page)
	flags := s.rflags
	if protect {
		flags |= WriteProtect
	}
	done := start
	var got int64
	skipped := 0 // pages skipped in a row because they exist
	for done < n {
		var k int
		var err error
		if buf != nil {
			k, err = s.u.Copy(addr+uintptr(done), bufAddr(buf, int(done)), int(n-done), flags)
		} else {
			k, err = s.u.ZeroPage(addr+uintptr(done), int(n-done), flags)
		}
		if k > 0 {
			skipped = 0
			if ob := s.cfg.observer; ob != nil {
				how := Copied
				if buf == nil {
					how = Zeroed
				}
				ob.Resolved(v.st.index, v.off+int64(addr-v.addr)+done, int64(k), how)
			}
		}
		done += int64(k)
		got += int64(k)
		o.filled += max(int64(k), 0)
		if err == nil {
			break
		}
		switch e := errnoOf(err); {
		case e == unix.EAGAIN && k > 0:
			continue // a short copy: finish it
		case e == unix.EAGAIN && done == 0:
			return 0, errRetry
		case e == unix.EAGAIN:
			// An event arrived mid-window; the faulting page is resolved. Leave the rest of
			// the window to later faults.
			st.eagain.Add(1)
			n = done
		case e == unix.EEXIST && done == 0:
			s.exists(o, v, addr) // someone else filled the faulting page
			return 0, nil
		case e == unix.EEXIST:
			s.existed(v, addr+uintptr(done))
			st.eexist.Add(1)
			done += page // skip the page that exists, go on with the rest of the window
			if skipped++; skipped >= maxSkipped {
				n = done // a run of present pages: the rest of the window is likely filled too
			}
		case gone(e):
			s.sstats.unhandled.Add(1)
			o.own, o.woke = int64(s.page), false
			return 0, nil
		case e == unix.EFAULT && mapped:
			s.account(st, got)
			return done - start, errMapFault
		default:
			return 0, fmt.Errorf("uffd: resolving fault at %#x: %w", addr, err)
		}
	}
	s.account(st, got)
	return done - start, nil
}

// account counts the bytes a window mapped, and its pages past the faulting one.
func (s *Server) account(st *liveStats, mapped int64) {
	st.bytes.Add(uint64(mapped))
	if page := int64(s.page); mapped > page {
		st.around.Add(uint64(mapped/page - 1))
	}
}

// stage writes the window [addr, addr+n) of v into the page cache through the staging file and
// maps it with UFFDIO_CONTINUE. Pages already in the page cache are never written: the window
// stops before the first one, and a faulting page found there is mapped as it is.
func (s *Server) stage(o *outcome, tab *table, v *view, addr uintptr, buf []byte, n int64, protect bool) (int64, error) {
	fd := int(s.cfg.stage.Fd())
	off := v.off + int64(addr-v.addr)
	s.stageMu.Lock()
	defer s.stageMu.Unlock()
	d, err := unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case err == nil && d == off:
		// In the page cache already (staged for a fault through another view): map it.
		err := s.continueWindow(o, v, addr, int64(s.page), protect, Continued)
		return o.n, err
	case err == nil && d < off+n:
		n = d - off
	case err != nil && err != unix.ENXIO:
		return 0, fmt.Errorf("uffd: staging at offset %d: lseek(SEEK_DATA): %w", off, err)
	}
	for w := int64(0); w < n; {
		k, err := unix.Pwrite(fd, buf[w:n], off+w)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if w < int64(s.page) {
				return 0, s.sourceError(o, tab, v, addr, off, fmt.Errorf("staging the page: pwrite: %w", err))
			}
			n = w &^ int64(s.page-1)
			break
		}
		w += int64(k)
	}
	// The pages are filled now, in the page cache: report them, then map what can be mapped
	// (a page that CONTINUE does not reach is mapped by its own minor fault later).
	if ob := s.cfg.observer; ob != nil {
		ob.Resolved(v.st.index, off, n, Staged)
	}
	err = s.continueWindow(o, v, addr, n, protect, Continued)
	if err == nil && o.n > 0 && o.how == Continued {
		o.how = Staged
	}
	return o.n, err
}

// continueWindow maps [addr, addr+n) of v from the page cache (UFFDIO_CONTINUE), skipping
// pages mapped already. It stops at a page that is not in the page cache. how is Continued,
// or Staged for pages just written through the staging file.
func (s *Server) continueWindow(o *outcome, v *view, addr uintptr, n int64, protect bool, how Resolution) error {
	st := &v.st.live
	page := int64(s.page)
	flags := s.rflags
	if protect {
		flags |= WriteProtect
	}
	var done, mapped int64
	if how == Continued && s.cfg.stage == nil && s.fastPath(o) {
		h := s.fastHandled(o, v, addr, n, Continued)
		tok := s.tracker.Filling(h)
		k, _ := s.u.Continue(addr, int(n), flags&^DontWake)
		if s.fastDone(o, h, tok, int64(k)) {
			s.account(st, n)
			return nil
		}
		done, mapped = max(int64(k), 0), max(int64(k), 0)
		o.filled = done
	}
	skipped := 0 // pages skipped in a row because they exist
	for done < n {
		k, err := s.u.Continue(addr+uintptr(done), int(n-done), flags)
		if k > 0 {
			skipped = 0
			if ob := s.cfg.observer; ob != nil {
				ob.Resolved(v.st.index, v.off+int64(addr-v.addr)+done, int64(k), how)
			}
		}
		done += int64(k)
		mapped += int64(k)
		o.filled += max(int64(k), 0)
		if err == nil {
			break
		}
		switch e := errnoOf(err); {
		case e == unix.EAGAIN && k > 0:
			continue
		case e == unix.EAGAIN && done == 0:
			return errRetry
		case e == unix.EEXIST && done == 0:
			s.exists(o, v, addr)
			return nil
		case e == unix.EEXIST:
			s.existed(v, addr+uintptr(done))
			st.eexist.Add(1)
			done += page
			if skipped++; skipped >= maxSkipped {
				n = done
			}
		case e == unix.EFAULT && done == 0, gone(e):
			// The page left the page cache (MADV_REMOVE) or the range went away since the
			// fault was raised: wake the thread, it faults again as MISSING or fails.
			o.own, o.woke = int64(s.page), false
			return nil
		case e == unix.EFAULT, e == unix.EAGAIN:
			n = done // the window reached a page not in the page cache, or an event came
		default:
			return fmt.Errorf("uffd: UFFDIO_CONTINUE at %#x: %w", addr, err)
		}
	}
	s.account(st, mapped)
	s.resolved(o, done, how)
	return nil
}

// existed tells the observer, if any, that the page at addr of v existed (EEXIST).
func (s *Server) existed(v *view, addr uintptr) {
	if o := s.cfg.observer; o != nil {
		o.Existed(v.st.index, v.off+int64(addr-v.addr))
	}
}

// maxSkipped is how many present pages in a row end a window: skipping each costs an ioctl.
const maxSkipped = 8

// wakeSiblings wakes the waiters at object offsets [off, off+n) on every other view of v's object.
func (s *Server) wakeSiblings(tab *table, v *view, off, n int64) {
	for _, j := range v.siblings {
		sv := &tab.views[j]
		lo, hi := off, off+n
		if lo < sv.off {
			lo = sv.off
		}
		if svEnd := sv.off + int64(sv.end-sv.addr); hi > svEnd {
			hi = svEnd
		}
		if lo >= hi {
			continue
		}
		sv.st.live.wakes.Add(1)
		s.u.Wake(sv.addr+uintptr(lo-sv.off), int(hi-lo))
	}
}

func (s *Server) resolveMinor(o *outcome, v *view, addr uintptr) error {
	off, planned := s.plan(&v.obj.minor, v, addr)
	protect := s.tracker != nil && s.tracker.Protect(v.st.index)
	if err := s.continueWindow(o, v, addr, planned, protect, Continued); err != nil {
		return err
	}
	v.obj.minor.settle(off, planned, off+o.n)
	return nil
}

func (s *Server) resolveWP(o *outcome, v *view, addr uintptr) error {
	if s.fastPath(o) {
		h := s.fastHandled(o, v, addr, int64(s.page), Unprotected)
		tok := s.tracker.Filling(h)
		k := int64(0)
		if s.u.WriteProtectRange(addr, s.page, false, 0) == nil {
			k = int64(s.page)
		}
		if s.fastDone(o, h, tok, k) {
			return nil
		}
	}
	err := s.u.WriteProtectRange(addr, s.page, false, s.rflags)
	if err == nil {
		s.resolved(o, int64(s.page), Unprotected)
		return nil
	}
	switch e := errnoOf(err); {
	case e == unix.EAGAIN:
		return errRetry
	case gone(e):
		o.own, o.woke = int64(s.page), false
		return nil
	}
	return fmt.Errorf("uffd: lifting write protection at %#x: %w", addr, err)
}

// sourceError handles a failed read of the source for the page at addr (object offset off).
// Under PoisonOnSourceError the page is poisoned in every view of the object, so that no
// thread anywhere waits on it or reads zeros there; the waiters are woken after the Tracker
// and the error handler heard of it.
func (s *Server) sourceError(o *outcome, tab *table, v *view, addr uintptr, off int64, rerr error) error {
	st := &v.st.live
	serr := &SourceError{Addr: addr, Offset: off, Err: rerr}
	if s.cfg.policy != PoisonOnSourceError {
		st.srcErr.Add(1)
		// Serve stops; the thread faults again and waits for the next Serve (or for the
		// caller to end the program). It is never given zeros.
		s.u.Wake(addr, s.page)
		return serr
	}
	// A page filled through another view since this fault was raised holds the source's
	// bytes already: map it (a view registered for minor faults) rather than poison it.
	if k, err := s.u.Continue(addr, s.page, s.rflags); k > 0 {
		if ob := s.cfg.observer; ob != nil {
			ob.Resolved(v.st.index, off, int64(k), Continued)
		}
		st.bytes.Add(uint64(k))
		s.resolved(o, int64(k), Continued)
		return nil
	} else if errnoOf(err) == unix.EEXIST {
		s.exists(o, v, addr)
		return nil
	}
	// Heard before the page is poisoned: a thread interrupted by a signal in its fault
	// faults again on its own and meets the poison at once, without waiting for a wake, and
	// whoever it tells must already know why.
	if s.cfg.onError != nil {
		s.cfg.onError(serr)
	}
	_, err := s.u.Poison(addr, s.page, DontWake)
	switch e := errnoOf(err); {
	case err == nil:
	case e == unix.EAGAIN:
		return errRetry // read the pending event, then the fault is tried again
	case e == unix.EEXIST:
		s.exists(o, v, addr) // filled meanwhile through another view: nothing to poison
		return nil
	case gone(e):
		o.own, o.woke = int64(s.page), false
		return nil
	default:
		return fmt.Errorf("uffd: poisoning %#x after a source error (%v): %w", addr, serr, err)
	}
	st.srcErr.Add(1)
	st.poison.Add(1)
	// The page is lost in every view: poison it in the others too (EEXIST: that view maps
	// it already; ENOENT: unregistered).
	for _, j := range v.siblings {
		sv := &tab.views[j]
		if off >= sv.off && off < sv.off+int64(sv.end-sv.addr) {
			s.u.Poison(sv.addr+uintptr(off-sv.off), s.page, DontWake)
		}
	}
	o.how, o.own, o.woke, o.sib = Failed, int64(s.page), false, int64(s.page)
	return nil
}
