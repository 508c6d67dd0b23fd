package fault

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// server is the pure-Go fault handler run by the handler process: the same algorithm as
// native.c, for builds without cgo. It must never run in the process whose memory it serves
// (it is Go code: see the package doc).
type server struct {
	u       *uffd.UFFD
	b       *block
	views   []uintptr
	len     int
	page    int
	src     SourceKind
	srcFD   int
	aliasFD int
	srcOff  int64
	srcLen  int64
	around  int
	poison  bool
	npages  int
	buf     []byte
	srcMap  []byte // read-only mapping of a file source (see mapSource)
	next    [MaxViews][2]int
	win     [MaxViews][2]int
	backlog []uffd.Msg
	msgs    [64]uffd.Msg // messages of the serving loop
	evs     [64]uffd.Msg // messages read while draining events
}

func newServer(u *uffd.UFFD, b *block, c *procConfig) *server {
	s := &server{u: u, b: b, views: c.Views, len: c.Len, page: c.Page, src: c.Source, srcFD: c.SourceFD,
		aliasFD: c.AliasFD, srcOff: c.SourceOff, srcLen: c.SourceLen, around: max(c.MaxAround, 1), poison: c.Poison}
	s.npages = s.len / s.page
	s.buf = make([]byte, s.around*s.page)
	s.srcMap = mapSource(s.src, s.srcFD, s.aliasFD, s.srcOff, s.srcLen, s.len, s.page)
	for v := range s.next {
		s.next[v] = [2]int{-1, -1}
		s.win[v] = [2]int{1, 1}
	}
	return s
}

func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func (s *server) record(v int, off int, k Kind, r Result, tid uint32, pages int) {
	if s.b.l.logcap == 0 {
		return
	}
	i := s.b.hdr(hLogNext)
	if i < uint64(s.b.l.logcap) {
		s.b.putEntry(int(i), Entry{Time: monoNow(), Offset: int64(off), Thread: tid, View: v, Kind: k, Result: r, Pages: pages})
	}
	s.b.setHdr(hLogNext, i+1)
}

func (s *server) violation(code int, off int) {
	if s.b.casHdr(hViolations, 0, 1) {
		s.b.setHdr(hViolOff, uint64(off))
		s.b.setHdr(hViolCode, uint64(code))
		return
	}
	s.b.addHdr(hViolations, 1)
}

func (s *server) markFilled(p, n int) {
	for i := p; i < p+n && i < s.npages; i++ {
		if st := s.b.state(i); st == stFilled || st == stPresent {
			s.violation(violTwice, i*s.page)
		}
		s.b.setState(i, stFilled)
	}
}

func (s *server) tracked(v int) bool { return s.b.hdr(hTracked)>>v&1 != 0 }

func (s *server) wake(v, off, n int) {
	if s.u.Wake(s.views[v]+uintptr(off), n) == nil {
		s.b.addCtr(v, cWakes, 1)
	}
}

func (s *server) wakeOthers(v, off, n int) {
	for w := range s.views {
		if w != v {
			s.wake(w, off, n)
		}
	}
}

func (s *server) aroundPages(v, k, p int) int {
	n := 1
	if s.around > 1 {
		if p == s.next[v][k] {
			s.win[v][k] = min(s.win[v][k]*2, s.around)
		} else {
			s.win[v][k] = 1
		}
		n = s.win[v][k]
	}
	n = min(n, s.npages-p)
	if k == 0 {
		for i := 1; i < n; i++ {
			if st := s.b.state(p + i); st == stFilled || st == stPresent {
				n = i
				break
			}
		}
	}
	s.next[v][k] = p + n
	return n
}

// srcHas reports whether the file source still has the bytes the object's first end bytes
// need. The source's mapping cannot tell: a page cut in the middle by a truncation still reads,
// its lost bytes as zeros; only pages wholly past the end make UFFDIO_COPY fail.
func (s *server) srcHas(end int) bool {
	var st unix.Stat_t
	return unix.Fstat(s.srcFD, &st) == nil && st.Size >= s.srcOff+min(int64(end), s.srcLen)
}

// fillSrc reads the source for buf, the bytes at object offset off: the bytes the source had
// when serving began (srcLen), then zeros. It returns how many bytes of buf are ready: all of
// them or, when the source fails or ends early (it shrank), the whole pages read before that
// point; 0 and the error when not even the first page could be read.
func (s *server) fillSrc(buf []byte, off int) (int, error) {
	have := 0
	if int64(off) < s.srcLen {
		have = int(min(s.srcLen-int64(off), int64(len(buf))))
	}
	if s.src != SourceFD {
		have = 0
	}
	for done := 0; done < have; {
		r, err := unix.Pread(s.srcFD, buf[done:have], s.srcOff+int64(off+done))
		if err == unix.EINTR {
			continue
		}
		if err != nil || r == 0 {
			// A read error, or the source ended before the length it had when serving began
			// (it was truncated): never zeros in place of its bytes.
			if err == nil {
				err = unix.ENODATA
			}
			return done / s.page * s.page, err
		}
		done += r
	}
	clear(buf[have:])
	return len(buf), nil
}

func errnoOf(err error) unix.Errno {
	var e unix.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

func (s *server) sourceFailed(v, off int, err error, tid uint32) {
	if s.poison {
		// A page filled through another view since this fault was raised holds the source's
		// bytes already: map it here (UFFDIO_CONTINUE, on a view registered for minor
		// faults) rather than poison it. EEXIST: it is mapped here already.
		k, cerr := s.u.Continue(s.views[v]+uintptr(off), s.page, 0)
		if k > 0 || errnoOf(cerr) == unix.EEXIST {
			c, r := cContinued, ResultContinued
			if k <= 0 {
				c, r = cEEXIST, ResultExists
			}
			s.b.addCtr(v, c, 1)
			s.record(v, off, KindMissing, r, tid, 1)
			s.wake(v, off, s.page)
			return
		}
	}
	s.b.addHdr(hErrors, 1)
	s.b.setHdr(hErrOff, uint64(off))
	s.b.setHdr(hErrno, uint64(errnoOf(err)))
	s.record(v, off, KindMissing, ResultError, tid, 1)
	if s.poison {
		// The page is lost in every view: poison it in each (EEXIST: that view maps it
		// already; ENOENT: the view is unregistered, its pair closing), then wake every view,
		// so that no thread waits on it anywhere.
		ok := true
		for w := range s.views {
			_, perr := s.u.Poison(s.views[w]+uintptr(off), s.page, uffd.DontWake)
			if e := errnoOf(perr); perr != nil && e != unix.EEXIST && e != unix.ENOENT && w == v {
				ok = false
			}
		}
		if ok {
			for w := range s.views {
				s.wake(w, off, s.page)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: reading the source at offset %d failed: %v; the faulting thread can never get its page, killing the served process %d\n", off, err, os.Getppid())
	unix.Kill(os.Getppid(), unix.SIGABRT)
	os.Exit(3)
}

func (s *server) missing(v, p int, tid uint32) {
	s.b.addCtr(v, cMissing, 1)
	n := s.aroundPages(v, 0, p)
	off, length, done := p*s.page, n*s.page, 0
	// Pages in flight: a standby that takes over from this process, should it die before
	// recording what it filled, must not take their later fills for invariant violations.
	s.b.setHdr(hInflightPages, uint64(n))
	s.b.setHdr(hInflight, uint64(p)+1)
	defer s.b.setHdr(hInflight, 0)
	var src []byte
	mapped := false // src is the source's mapping: a file that shrank makes COPY fail
	switch {
	case s.src == SourceFD && s.aliasFD < 0 && off+length <= len(s.srcMap) && s.srcHas(off+length):
		src, mapped = s.srcMap[off:off+length], true
	case s.src != SourceZero || s.aliasFD >= 0:
		got, err := s.fillSrc(s.buf[:length], off)
		if got == 0 {
			s.sourceFailed(v, off, err, tid)
			return
		}
		n, length = got/s.page, got // the pages the source still has; the rest fault again
		s.next[v][0] = p + n
		src = s.buf[:length]
	}
	result := ResultCopied
	wp := s.tracked(v)
	var flags uffd.ResolveFlags = uffd.DontWake
	if wp {
		flags |= uffd.WriteProtect
		if src == nil {
			// UFFDIO_ZEROPAGE has no write-protect mode: copy zeros instead.
			src = s.buf[:length]
			clear(src)
		}
	}
	for done < length {
		a := s.views[v] + uintptr(off+done)
		var got int
		var err error
		switch {
		case s.aliasFD >= 0:
			result = ResultStaged
			w, werr := unix.Pwrite(s.aliasFD, src[done:], int64(off+done))
			if werr == unix.EINTR {
				continue
			}
			if werr != nil {
				s.sourceFailed(v, off+done, werr, tid)
				return
			}
			s.b.addCtr(v, cStaged, uint64(w/s.page))
			got, err = s.u.Continue(a, w, flags)
		case src == nil:
			result = ResultZeroed
			got, err = s.u.ZeroPage(a, length-done, uffd.DontWake)
		default:
			got, err = s.u.Copy(a, unsafe.Pointer(&src[done]), length-done, flags)
		}
		e := errnoOf(err)
		if got > 0 {
			s.markFilled((off+done)/s.page, got/s.page)
			c := cCopied
			if result == ResultZeroed {
				c = cZeroed
			} else if result == ResultStaged {
				c = cContinued
			}
			s.b.addCtr(v, c, uint64(got/s.page))
			s.b.addCtr(v, cBytes, uint64(got))
			done += got
			if e == unix.EAGAIN {
				continue
			}
		}
		switch {
		case err == nil:
			continue
		case e == unix.EEXIST:
			s.b.addCtr(v, cEEXIST, 1)
			if done == 0 {
				result = ResultExists
			}
			done = length
		case e == unix.EAGAIN:
			s.b.addCtr(v, cEAGAIN, 1)
			s.readEvents()
		case e == unix.ENOENT:
			// The view is no longer registered: the pair is closing, and its Close wakes and
			// fails every thread left waiting there. Nothing to fill.
			done = length
		case e == unix.EFAULT && mapped:
			// The file shrank under its mapping: read what it still has with pread.
			got, ferr := s.fillSrc(s.buf[:length], off)
			if got <= done {
				s.sourceFailed(v, off+done, ferr, tid)
				return
			}
			n, length = got/s.page, got
			s.next[v][0] = p + n
			src, mapped = s.buf[:length], false
		case e == unix.EFAULT && s.aliasFD >= 0 && got <= 0:
			done = length
		default:
			s.sourceFailed(v, off+done, err, tid)
			return
		}
	}
	if n > 1 {
		s.b.addCtr(v, cAround, uint64(n-1))
	}
	// Counters, states and log first, then wake every view (see native.c).
	s.record(v, off, KindMissing, result, tid, n)
	s.wake(v, off, length)
	s.wakeOthers(v, off, length)
}

func (s *server) minor(v, p int, tid uint32) {
	s.b.addCtr(v, cMinor, 1)
	if s.b.state(p) == stEmpty && s.aliasFD < 0 {
		s.violation(violMinorUnfilled, p*s.page)
	}
	n := s.aroundPages(v, 1, p)
	off := p * s.page
	result := ResultContinued
	for {
		flags := uffd.DontWake
		if s.tracked(v) {
			flags |= uffd.WriteProtect
		}
		got, err := s.u.Continue(s.views[v]+uintptr(off), n*s.page, flags)
		if got > 0 {
			s.b.addCtr(v, cContinued, uint64(got/s.page))
		}
		if err == nil || got > 0 {
			break
		}
		e := errnoOf(err)
		if e == unix.EAGAIN {
			s.b.addCtr(v, cEAGAIN, 1)
			s.readEvents()
			continue
		}
		if n > 1 {
			n = 1
			continue
		}
		if e == unix.EEXIST {
			s.b.addCtr(v, cEEXIST, 1)
			result = ResultExists
		}
		break
	}
	if n > 1 {
		s.b.addCtr(v, cAround, uint64(n-1))
	}
	s.record(v, off, KindMinor, result, tid, n)
	s.wake(v, off, n*s.page)
}

func (s *server) wp(v, p int, tid uint32) {
	s.b.addCtr(v, cWP, 1)
	if !s.b.dirty(v, p) {
		s.b.setDirty(v, p, true)
		s.b.addCtr(v, cDirty, 1)
	}
	for {
		err := s.u.WriteProtectRange(s.views[v]+uintptr(p*s.page), s.page, false, uffd.DontWake)
		if errnoOf(err) != unix.EAGAIN {
			break
		}
		s.readEvents()
	}
	s.record(v, p*s.page, KindWP, ResultUnprotected, tid, 1)
	s.wake(v, p*s.page, s.page)
}

func (s *server) remove(start, end uintptr) {
	s.b.addHdr(hRemoves, 1)
	for v, a := range s.views {
		b := a + uintptr(s.len)
		lo, hi := max(start, a), min(end, b)
		if lo >= hi {
			continue
		}
		first, last := int(lo-a)/s.page, (int(hi-a)+s.page-1)/s.page
		for p := first; p < last; p++ {
			s.b.setState(p, stReset)
		}
		s.record(v, int(lo-a), KindRemove, ResultReset, 0, last-first)
	}
}

func (s *server) handle(m *uffd.Msg) {
	s.b.addHdr(hMsgs, 1)
	switch m.Event() {
	case uffd.EventPagefault:
		addr := m.Address()
		for v, a := range s.views {
			if addr >= a && addr < a+uintptr(s.len) {
				p := int(addr-a) / s.page
				switch f := m.Flags(); {
				case f&uffd.FlagWP != 0:
					s.wp(v, p, m.ThreadID())
				case f&uffd.FlagMinor != 0:
					s.minor(v, p, m.ThreadID())
				default:
					s.missing(v, p, m.ThreadID())
				}
				return
			}
		}
	case uffd.EventRemove:
		s.remove(m.Range())
	}
}

// readMsgs reads pending messages into dst without blocking.
func (s *server) readMsgs(dst *[64]uffd.Msg) []uffd.Msg {
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), len(dst)*len(dst[0]))
	n, err := unix.Read(s.u.Fd(), buf)
	if err != nil || n <= 0 {
		return nil
	}
	return dst[:n/len(dst[0])]
}

func (s *server) readEvents() {
	for {
		msgs := s.readMsgs(&s.evs)
		if len(msgs) == 0 {
			return
		}
		for i := range msgs {
			if msgs[i].Event() != uffd.EventPagefault {
				s.handle(&msgs[i])
			} else {
				s.backlog = append(s.backlog, msgs[i])
			}
		}
	}
}

// takeOver is the first act of a standby that replaces a dead primary. The primary may have
// died holding a fault message it had read but not resolved: the thread of that fault waits
// until someone wakes it (a fault taken in user mode is retried after any signal, but one taken
// inside a system call is not), so every view is woken, and each thread still waiting faults
// again, sending a message this process reads. Pages the primary was filling are marked
// reset: whether they made it into memory is unknown, and either outcome is correct.
func (s *server) takeOver() {
	if p := s.b.hdr(hInflight); p != 0 {
		first := int(p - 1)
		for i := first; i < first+int(s.b.hdr(hInflightPages)) && i < s.npages; i++ {
			if s.b.state(i) == stEmpty {
				s.b.setState(i, stReset)
			}
		}
		s.b.setHdr(hInflight, 0)
	}
	for v := range s.views {
		s.wake(v, 0, s.len)
	}
}

// loop serves until stopfd becomes readable or hangs up (the served process closed its end).
func (s *server) loop(stopfd int) {
	pfd := []unix.PollFd{{Fd: int32(s.u.Fd()), Events: unix.POLLIN}, {Fd: int32(stopfd), Events: unix.POLLIN}}
	for {
		for len(s.backlog) > 0 {
			m := s.backlog[len(s.backlog)-1]
			s.backlog = s.backlog[:len(s.backlog)-1]
			s.handle(&m)
		}
		s.b.addHdr(hLoops, 1)
		if msgs := s.readMsgs(&s.msgs); len(msgs) > 0 {
			for i := range msgs {
				s.handle(&msgs[i])
			}
			continue
		}
		if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
			return
		}
		if pfd[1].Revents != 0 || pfd[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return
		}
	}
}
