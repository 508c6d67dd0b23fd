package uffd

import (
	"io"
	"sort"
	"sync"
	"time"
)

// object is one source: a ReaderAt (nil: zero-fill) seen through one or more views.
type object struct {
	id     int
	length int64
	src    io.ReaderAt

	missing aroundState // fault-around streams of MISSING faults, in object offsets
	minor   aroundState // and of MINOR faults
}

// viewEntry is one handled view as the caller named it, with its counters. Fragments of the
// view left by events point to the same entry.
type viewEntry struct {
	addr   uintptr
	length int
	obj    *object
	index  int
	live   liveStats
}

// view is one contiguous part of a handled view: [addr, end) maps the object from offset off.
type view struct {
	addr, end uintptr
	off       int64
	obj       *object
	st        *viewEntry
	siblings  []int32 // indexes in table.views of the other views of obj
}

// table is an immutable snapshot of the handled views, sorted by address. Every change builds
// a new one, so the fault path reads it without locks.
type table struct {
	views []view
	// dropped remembers the most recently unmapped, moved-away or unhandled ranges and when:
	// a fault read before its range was dropped is woken (and then fails or faults again as
	// the kernel decides) instead of being reported as unhandled. A fault read after that is
	// unhandled: waking it would only make it fault again, forever.
	dropped []span
}

type span struct {
	addr, end uintptr
	at        time.Time
}

const maxDropped = 64

func buildTable(views []view, dropped []span) *table {
	sort.Slice(views, func(i, j int) bool { return views[i].addr < views[j].addr })
	byObj := map[*object][]int32{}
	for i := range views {
		byObj[views[i].obj] = append(byObj[views[i].obj], int32(i))
	}
	for i := range views {
		views[i].siblings = nil
		for _, j := range byObj[views[i].obj] {
			if int(j) != i {
				views[i].siblings = append(views[i].siblings, j)
			}
		}
	}
	if len(dropped) > maxDropped {
		dropped = dropped[len(dropped)-maxDropped:]
	}
	return &table{views: views, dropped: dropped}
}

// find returns the index of the view holding addr, or -1.
func (t *table) find(addr uintptr) int {
	lo, hi := 0, len(t.views)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if t.views[m].end <= addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(t.views) && t.views[lo].addr <= addr {
		return lo
	}
	return -1
}

// overlapping returns the index of a view overlapping [addr, end), or -1.
func (t *table) overlapping(addr, end uintptr) int {
	for i := range t.views {
		if t.views[i].addr < end && addr < t.views[i].end {
			return i
		}
	}
	return -1
}

func (t *table) wasDropped(addr uintptr, read time.Time) bool {
	for _, d := range t.dropped {
		if d.addr <= addr && addr < d.end && read.Before(d.at) {
			return true
		}
	}
	return false
}

// cut removes [lo, hi) from views. It returns the views left and the parts removed (with
// their offsets adjusted), in address order.
func cut(views []view, lo, hi uintptr) (kept, removed []view) {
	for _, v := range views {
		if v.end <= lo || hi <= v.addr {
			kept = append(kept, v)
			continue
		}
		if v.addr < lo {
			left := v
			left.end = lo
			kept = append(kept, left)
		}
		if hi < v.end {
			right := v
			right.off += int64(hi - v.addr)
			right.addr = hi
			kept = append(kept, right)
		}
		mid := v
		if mid.addr < lo {
			mid.off += int64(lo - mid.addr)
			mid.addr = lo
		}
		if hi < mid.end {
			mid.end = hi
		}
		removed = append(removed, mid)
	}
	return kept, removed
}

// markGone flags the entries of removed that have no fragment left in views.
func markGone(views, removed []view) {
	for _, r := range removed {
		alive := false
		for _, v := range views {
			if v.st == r.st {
				alive = true
				break
			}
		}
		if !alive {
			r.st.live.gone.Store(true)
		}
	}
}

// aroundStreams is how many sequential streams per object fault-around follows.
const aroundStreams = 4

// aroundState follows sequential fault streams in one object: each stream remembers where its
// next fault would land and how big its last window was.
type aroundState struct {
	mu     sync.Mutex
	next   [aroundStreams]int64
	win    [aroundStreams]int64
	victim int
}

// window returns how many bytes to resolve for a fault at object offset off: double the
// stream's last window if off continues a stream, one page otherwise. max is the cap.
func (a *aroundState) window(off, page, max int64) int64 {
	a.mu.Lock()
	for i := range a.next {
		if a.win[i] != 0 && a.next[i] == off {
			w := a.win[i] * 2
			if w > max {
				w = max
			}
			a.win[i] = w
			a.next[i] = off + w
			a.mu.Unlock()
			return w
		}
	}
	i := a.victim
	a.victim = (a.victim + 1) % aroundStreams
	a.win[i] = page
	a.next[i] = off + page
	a.mu.Unlock()
	return page
}

// settle records that a window planned at off ended at end instead (cut short by the end of the
// view or data, or by EEXIST), so that the stream continues from where the pages really stop.
func (a *aroundState) settle(off, planned, end int64) {
	if end == off+planned {
		return
	}
	a.mu.Lock()
	for i := range a.next {
		if a.next[i] == off+planned {
			a.next[i] = end
			if end <= off {
				a.win[i] = 0
			}
			break
		}
	}
	a.mu.Unlock()
}
