package uffd

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// event applies a non-cooperative event to the table of views.
func (s *Server) event(m *Msg) {
	switch m.Event() {
	case EventRemove:
		// The pages are gone from [start, end): their next touch faults as MISSING again and
		// is served from the source again. Nothing to change.
		s.sstats.removes.Add(1)
		if s.tracker != nil {
			start, end := m.Range()
			tab := s.tab.Load()
			for i := range tab.views {
				v := &tab.views[i]
				lo, hi := max(start, v.addr), min(end, v.end)
				if lo < hi {
					s.tracker.Removed(v.st.index, v.off+int64(lo-v.addr), int64(hi-lo))
				}
			}
		}
	case EventUnmap:
		s.sstats.unmaps.Add(1)
		start, end := m.Range()
		s.mu.Lock()
		s.dropLocked(start, end)
		s.mu.Unlock()
	case EventRemap:
		s.sstats.remaps.Add(1)
		from, to, length := m.Remap()
		s.mu.Lock()
		if length == 0 {
			s.duplicateLocked(from, to)
		} else {
			s.moveLocked(from, to, uintptr(length))
		}
		s.mu.Unlock()
	case EventFork:
		s.sstats.forks.Add(1)
		s.fork(m.ForkFD())
	}
}

func (s *Server) dropLocked(start, end uintptr) {
	old := s.tab.Load()
	kept, removed := cut(old.views, start, end)
	if len(removed) == 0 {
		return
	}
	markGone(kept, removed)
	s.tab.Store(buildTable(kept, append(append([]span(nil), old.dropped...), span{start, end, time.Now()})))
}

// moveLocked follows mremap moving [from, from+length) to [to, to+length).
func (s *Server) moveLocked(from, to, length uintptr) {
	old := s.tab.Load()
	kept, moved := cut(old.views, from, from+length)
	kept, replaced := cut(kept, to, to+length) // what was at the destination is gone
	for i := range moved {
		moved[i].addr = to + (moved[i].addr - from)
		moved[i].end = to + (moved[i].end - from)
	}
	kept = append(kept, moved...)
	markGone(kept, replaced)
	dropped := append([]span(nil), old.dropped...)
	if len(moved) > 0 {
		dropped = append(dropped, span{from, from + length, time.Now()})
	}
	s.tab.Store(buildTable(kept, dropped))
}

// duplicateLocked adds the view that mremap(from, 0, n, ...) made at to: with
// FeatureEventRemap the duplicate stays registered, so its faults come here. Its length is the
// new mapping's (from /proc/self/maps when the memory is this process's), never past the object.
func (s *Server) duplicateLocked(from, to uintptr) {
	old := s.tab.Load()
	i := old.find(from)
	if i < 0 {
		return // not ours
	}
	src := old.views[i]
	off := src.off + int64(from-src.addr)
	length := src.obj.length - off
	if end, ok := mappingEnd(to); ok && int64(end-to) < length {
		length = int64(end - to)
	}
	if length <= 0 {
		return
	}
	kept, replaced := cut(old.views, to, to+uintptr(length))
	markGone(kept, replaced)
	e := &viewEntry{addr: to, length: int(length), obj: src.obj, index: -1}
	s.entries = append(s.entries, e)
	kept = append(kept, view{addr: to, end: to + uintptr(length), off: off, obj: src.obj, st: e})
	s.sstats.duplicates.Add(1)
	s.tab.Store(buildTable(kept, old.dropped))
}

func (s *Server) fork(fd int) {
	if s.cfg.onFork == nil {
		unix.Close(fd)
		return
	}
	child, err := FromFD(fd)
	if err != nil {
		unix.Close(fd)
		if s.cfg.onError != nil {
			s.cfg.onError(fmt.Errorf("uffd: adopting the userfaultfd of a forked child: %w", err))
		}
		return
	}
	s.cfg.onFork(child)
}

// mappingEnd returns the end of the mapping of this process that contains addr.
func mappingEnd(addr uintptr) (uintptr, bool) {
	vs, err := mem.FindVMAs(addr, addr+1)
	if err != nil || len(vs) == 0 || vs[0].Start > addr {
		return 0, false
	}
	return vs[0].End, true
}
