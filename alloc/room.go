package alloc

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// Lease is the start of a region's reserved room, handed to a caller that maps something over
// it with MAP_FIXED or MREMAP_FIXED (package mirror places adjacent mirrors this way). The range
// is owned by the lease until Release: the region's Close leaves it mapped.
type Lease struct {
	s       *leaseState
	cleanup runtime.Cleanup
}

type leaseState struct {
	once sync.Once
	err  error
	r    *state
	n    int
	done bool // released (guarded by r.mu)
}

// Lend hands out the first n bytes (rounded up to pages) of the room reserved with WithRoom.
// Only one Lease can be out at a time; it fails with ErrNoRoom if the room is smaller than n or
// already lent, and with ErrClosed after Close.
func (r *Region) Lend(n int) (*Lease, error) {
	const op = "alloc.Region.Lend"
	if r.st() == nil {
		return nil, &Error{Op: op, Size: n, Err: errNilRegion}
	}
	rn, ok := roundUp(n)
	if !ok {
		return nil, &Error{Op: op, Size: n, Err: fmt.Errorf("%w: size %d must be positive", ErrSize, n)}
	}
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed.Load():
		return nil, &Error{Op: op, Size: n, Err: ErrClosed}
	case s.lent != 0:
		return nil, &Error{Op: op, Size: n, Err: fmt.Errorf("%w: the room is already lent", ErrNoRoom)}
	case rn > s.room:
		return nil, &Error{Op: op, Size: n, Err: fmt.Errorf("%w: %d bytes reserved, %d wanted (allocate with alloc.WithRoom(%d))", ErrNoRoom, s.room, rn, rn)}
	}
	if s.stale > 0 {
		// A release could not restore the reservation: restore it now, or lend nothing.
		if err := reserveOver(mem.Add(s.base, uintptr(s.size)), uintptr(s.stale)); err != nil {
			return nil, &Error{Op: op, Size: n, Err: fmt.Errorf("restoring the room's reservation: %w", err)}
		}
		s.stale = 0
	}
	s.lent = rn
	l := &Lease{s: &leaseState{r: s, n: rn}}
	l.cleanup = runtime.AddCleanup(l, func(ls *leaseState) { ls.abandon() }, l.s)
	return l, nil
}

var errNilLease = fmt.Errorf("%w: nil *Lease, or one not made by Region.Lend", ErrInvalid)

// abandon is the cleanup of a Lease that became unreachable without Release. Whatever its
// holder mapped over the range may still be in use through slices, so it is left mapped: the
// range leaks (the region's Close leaves lent room alone), and a warning says so.
func (ls *leaseState) abandon() {
	s := ls.r
	s.mu.Lock()
	defer s.mu.Unlock()
	if ls.done {
		return
	}
	leakWarning(fmt.Sprintf("alloc: a Lease of %d bytes at %#x became unreachable before Release: the range and what was mapped over it leak (keep the Lease reachable while it is used, and call Release)",
		ls.n, mem.Addr(mem.Add(s.base, uintptr(s.size)))))
}

// Bytes returns the leased address range. It is inaccessible (PROT_NONE) until the holder
// maps over it. It returns nil for a nil Lease.
func (l *Lease) Bytes() []byte {
	if l == nil || l.s == nil {
		return nil
	}
	return mem.Slice(l.ptr(), l.s.n)
}

func (l *Lease) ptr() mem.Pointer { return mem.Add(l.s.r.base, uintptr(l.s.r.size)) }

// Release gives the range back. While the region is open, whatever the holder mapped there is
// replaced, atomically, by a fresh PROT_NONE reservation (the range never becomes free for
// other mappings); after the region's Close, the range is unmapped. If the reservation cannot
// be restored, Release returns the error (again on every later call) and the range goes back
// to the region, which unmaps it on Close. Otherwise a second Release returns nil.
func (l *Lease) Release() error {
	if l == nil || l.s == nil {
		return &Error{Op: "alloc.Lease.Release", Err: errNilLease}
	}
	err := l.s.release()
	l.cleanup.Stop()
	return err
}

// CloseWith releases l and closes r in one step: a single munmap covers the region, its room
// and whatever the lease holder mapped there, which saves the system call that restores the
// room's reservation. l must be a lease of r. A second call, or a later Close or Release,
// returns nil.
func (r *Region) CloseWith(l *Lease) error {
	const op = "alloc.Region.CloseWith"
	switch {
	case r.st() == nil:
		return &Error{Op: op, Err: errNilRegion}
	case l == nil || l.s == nil:
		return &Error{Op: op, Err: fmt.Errorf("%w: CloseWith(nil *Lease): pass the region's Lease (from Lend), or call Close", errNilLease)}
	case l.s.r != r.s:
		return &Error{Op: op, Size: l.s.n, Err: fmt.Errorf("%w: the lease belongs to another region", ErrNoRoom)}
	}
	var err error
	l.s.once.Do(func() {
		s := r.s
		s.mu.Lock()
		defer s.mu.Unlock()
		l.s.done = true
		if !s.closed.Load() {
			s.lent = 0 // the range goes with the region
			err = s.releaseLocked()
			return
		}
		err = mem.Munmap(mem.Add(s.base, uintptr(s.size)), uintptr(l.s.n))
	})
	l.cleanup.Stop()
	err = errors.Join(err, r.Close())
	return err
}

func (ls *leaseState) release() error {
	ls.once.Do(func() {
		s := ls.r
		s.mu.Lock()
		defer s.mu.Unlock()
		ls.done = true
		p := mem.Add(s.base, uintptr(s.size))
		if s.closed.Load() {
			ls.err = mem.Munmap(p, uintptr(ls.n))
			return
		}
		// The range goes back to the region either way: restored as a reservation, or, if
		// that fails, with the holder's mappings still in it, to be restored by the next Lend
		// or unmapped with the region by Close.
		s.lent = 0
		if ls.err = reserveOver(p, uintptr(ls.n)); ls.err != nil {
			s.stale = ls.n
			ls.err = fmt.Errorf("alloc.Lease.Release: restoring the room's reservation (the range stays the region's and goes with its Close): %w", ls.err)
		}
	})
	return ls.err
}

// reserveOver is mem.ReserveOver; tests replace it to make it fail.
var reserveOver = mem.ReserveOver
