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
	msgs  []Msg
	extra []Msg      // messages read while draining events for an EAGAIN
	later []laterMsg // faults read while draining, resolved after the current batch
	buf   []byte
}

type laterMsg struct {
	m Msg
	t time.Time
}

// errRetry says a resolve met EAGAIN without progress: read the pending event, then retry.
var errRetry = errors.New("uffd: event pending")

func (s *Server) runWorker() {
	w := &worker{
		msgs:  make([]Msg, s.cfg.batch),
		extra: make([]Msg, s.cfg.batch),
		buf:   s.pool.get(),
	}
	defer s.pool.put(w.buf)
	if err := s.serveLoop(w); err != nil {
		s.fail(err)
	}
}

// serveLoop returns nil when told to stop, the fatal error otherwise.
func (s *Server) serveLoop(w *worker) error {
	for !s.stopping.Load() {
		n, err := s.u.ReadMessages(w.msgs)
		if err != nil {
			if s.stopping.Load() {
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return errors.New("uffd: the userfaultfd's read deadline was set by someone else while serving")
			}
			if errors.Is(err, io.EOF) {
				return errors.New("uffd: the userfaultfd reached end of file (the process whose memory it serves is gone)")
			}
			return fmt.Errorf("uffd: reading the userfaultfd: %w", err)
		}
		s.sstats.reads.Add(1)
		s.sstats.messages.Add(uint64(n))
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

// drain reads what is pending without blocking, handles the events and keeps the faults for
// later. It is called when a resolve returned EAGAIN: an event waits to be read.
func (s *Server) drain(w *worker) error {
	n, err := s.u.TryReadMessages(w.extra)
	if err != nil {
		return err
	}
	if n == 0 {
		// The event is queued right after the kernel counts it, or another worker has read it
		// and is applying it: let that happen. Not blocking in read(2) here: another worker
		// may be parked there already and would take the event, leaving this one stuck.
		runtime.Gosched()
		return nil
	}
	s.sstats.messages.Add(uint64(n))
	t := time.Now()
	for i := 0; i < n; i++ {
		if w.extra[i].Event() == EventPagefault {
			w.later = append(w.later, laterMsg{w.extra[i], t})
		} else {
			s.event(&w.extra[i])
		}
	}
	return nil
}

// fault resolves one page fault message.
func (s *Server) fault(w *worker, m *Msg, t time.Time) error {
	addr := m.Address() &^ uintptr(s.page-1)
	flags := m.Flags()
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
		var err error
		switch {
		case flags&FlagWP != 0:
			err = s.resolveWP(v, addr)
		case flags&FlagMinor != 0:
			err = s.resolveMinor(tab, v, addr)
		default:
			err = s.resolveMissing(w, tab, v, addr)
		}
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
		st.lat.observe(time.Since(t))
		return err
	}
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

func (s *Server) resolveMissing(w *worker, tab *table, v *view, addr uintptr) error {
	obj := v.obj
	off, planned := s.plan(&obj.missing, v, addr)
	n := planned
	page := int64(s.page)
	var buf []byte
	if obj.src != nil {
		buf = w.buf[:n]
		k, rerr := obj.src.ReadAt(buf, off)
		if int64(k) < n {
			switch {
			case rerr == io.EOF && k > 0:
				// The source ends inside the window: serve up to its end, the tail of its last
				// page zeroed as a file mapping would be.
				full := (int64(k) + page - 1) &^ (page - 1)
				clear(buf[k:full])
				n = full
			case int64(k) >= page:
				n = int64(k) &^ (page - 1) // the pages read are good; the rest will fault again
			default:
				if rerr == nil || rerr == io.EOF {
					rerr = io.ErrUnexpectedEOF
				}
				obj.missing.settle(off, planned, off)
				return s.sourceError(v, addr, off, rerr)
			}
		}
	}
	done, err := s.fill(v, addr, buf, n)
	if err != nil {
		return err
	}
	obj.missing.settle(off, planned, off+done)
	if done > 0 && len(v.siblings) > 0 {
		s.wakeSiblings(tab, v, off, done)
	}
	return nil
}

// fill resolves [addr, addr+n) of v from buf (nil: zeros), finishing short copies and skipping
// pages that already exist. It returns how far the window got (0 if the faulting page existed).
func (s *Server) fill(v *view, addr uintptr, buf []byte, n int64) (int64, error) {
	st := &v.st.live
	page := int64(s.page)
	var done, mapped int64
	skipped := 0 // pages skipped in a row because they exist
	for done < n {
		var k int
		var err error
		if buf != nil {
			k, err = s.u.Copy(addr+uintptr(done), bufAddr(buf, int(done)), int(n-done), 0)
		} else {
			k, err = s.u.ZeroPage(addr+uintptr(done), int(n-done), 0)
		}
		if k > 0 {
			skipped = 0
			if o := s.cfg.observer; o != nil {
				how := Copied
				if buf == nil {
					how = Zeroed
				}
				o.Resolved(v.st.index, v.off+int64(addr-v.addr)+done, int64(k), how)
			}
		}
		done += int64(k)
		mapped += int64(k)
		if err == nil {
			break
		}
		switch e := errnoOf(err); {
		case e == unix.EAGAIN && k > 0:
			continue // a short copy: finish it
		case e == unix.EAGAIN && done == 0:
			return 0, errRetry
		case e == unix.EAGAIN:
			// An event arrived mid-window; the faulting page is resolved and woken. Leave the
			// rest of the window to later faults.
			st.eagain.Add(1)
			n = done
		case e == unix.EEXIST && done == 0:
			// Someone else filled the faulting page: wake its waiters (errors never wake).
			s.existed(v, addr)
			st.eexist.Add(1)
			st.stale.Add(1)
			st.wakes.Add(1)
			s.u.Wake(addr, s.page)
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
			s.u.Wake(addr, s.page)
			return 0, nil
		default:
			return 0, fmt.Errorf("uffd: resolving fault at %#x: %w", addr, err)
		}
	}
	st.bytes.Add(uint64(mapped))
	if mapped > page {
		st.around.Add(uint64(mapped/page - 1))
	}
	return done, nil
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

func (s *Server) resolveMinor(tab *table, v *view, addr uintptr) error {
	st := &v.st.live
	off, planned := s.plan(&v.obj.minor, v, addr)
	n := planned
	page := int64(s.page)
	var done, mapped int64
	skipped := 0 // pages skipped in a row because they exist
	for done < n {
		k, err := s.u.Continue(addr+uintptr(done), int(n-done), 0)
		if k > 0 {
			skipped = 0
			if o := s.cfg.observer; o != nil {
				o.Resolved(v.st.index, v.off+int64(addr-v.addr)+done, int64(k), Continued)
			}
		}
		done += int64(k)
		mapped += int64(k)
		if err == nil {
			break
		}
		switch e := errnoOf(err); {
		case e == unix.EAGAIN && k > 0:
			continue
		case e == unix.EAGAIN && done == 0:
			return errRetry
		case e == unix.EEXIST && done == 0:
			s.existed(v, addr)
			st.eexist.Add(1)
			st.stale.Add(1)
			st.wakes.Add(1)
			s.u.Wake(addr, s.page)
			n = 0
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
			st.wakes.Add(1)
			s.u.Wake(addr, s.page)
			n = 0
		case e == unix.EFAULT, e == unix.EAGAIN:
			n = done // the window reached a page not in the page cache, or an event came
		default:
			return fmt.Errorf("uffd: resolving minor fault at %#x: %w", addr, err)
		}
	}
	v.obj.minor.settle(off, planned, off+n)
	st.bytes.Add(uint64(mapped))
	if mapped > page {
		st.around.Add(uint64(mapped/page - 1))
	}
	return nil
}

func (s *Server) resolveWP(v *view, addr uintptr) error {
	err := s.u.WriteProtectRange(addr, s.page, false, 0)
	if err == nil {
		return nil
	}
	switch e := errnoOf(err); {
	case e == unix.EAGAIN:
		return errRetry
	case gone(e):
		s.u.Wake(addr, s.page)
		return nil
	}
	return fmt.Errorf("uffd: lifting write protection at %#x: %w", addr, err)
}

func (s *Server) sourceError(v *view, addr uintptr, off int64, rerr error) error {
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
	if k, err := s.u.Continue(addr, s.page, 0); k > 0 {
		if o := s.cfg.observer; o != nil {
			o.Resolved(v.st.index, off, int64(k), Continued)
		}
		st.bytes.Add(uint64(k))
		return nil
	} else if errnoOf(err) == unix.EEXIST {
		s.existed(v, addr)
		st.eexist.Add(1)
		s.u.Wake(addr, s.page)
		return nil
	}
	st.srcErr.Add(1)
	for {
		_, err := s.u.Poison(addr, s.page, 0)
		switch e := errnoOf(err); {
		case err == nil:
			st.poison.Add(1)
		case e == unix.EAGAIN:
			return errRetry // read the pending event, then the fault is tried again
		case e == unix.EEXIST:
			s.u.Wake(addr, s.page) // filled meanwhile through another view: nothing to poison
		case gone(e):
			s.u.Wake(addr, s.page)
		default:
			return fmt.Errorf("uffd: poisoning %#x after a source error (%v): %w", addr, serr, err)
		}
		break
	}
	if s.cfg.onError != nil {
		s.cfg.onError(serr)
	}
	return nil
}
