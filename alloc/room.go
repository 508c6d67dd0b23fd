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
}

// Lend hands out the first n bytes (rounded up to pages) of the room reserved with WithRoom.
// Only one Lease can be out at a time; it fails with ErrNoRoom if the room is smaller than n or
// already lent, and with ErrClosed after Close.
func (r *Region) Lend(n int) (*Lease, error) {
	const op = "alloc.Region.Lend"
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
	s.lent = rn
	l := &Lease{s: &leaseState{r: s, n: rn}}
	l.cleanup = runtime.AddCleanup(l, func(ls *leaseState) { ls.release() }, l.s)
	return l, nil
}

// Bytes returns the leased address range. It is inaccessible (PROT_NONE) until the holder
// maps over it.
func (l *Lease) Bytes() []byte { return mem.Slice(l.ptr(), l.s.n) }

func (l *Lease) ptr() mem.Pointer { return mem.Add(l.s.r.base, uintptr(l.s.r.size)) }

// Release gives the range back. While the region is open, whatever the holder mapped there is
// replaced, atomically, by a fresh PROT_NONE reservation (the range never becomes free for
// other mappings); after the region's Close, the range is unmapped. A second Release returns nil.
func (l *Lease) Release() error {
	err := l.s.release()
	l.cleanup.Stop()
	return err
}

// CloseWith releases l and closes r in one step: a single munmap covers the region, its room
// and whatever the lease holder mapped there, which saves the system call that restores the
// room's reservation. l must be a lease of r. A second call, or a later Close or Release,
// returns nil.
func (r *Region) CloseWith(l *Lease) error {
	if l.s.r != r.s {
		return &Error{Op: "alloc.Region.CloseWith", Size: l.s.n, Err: fmt.Errorf("%w: the lease belongs to another region", ErrNoRoom)}
	}
	var err error
	l.s.once.Do(func() {
		s := r.s
		s.mu.Lock()
		defer s.mu.Unlock()
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
		p := mem.Add(s.base, uintptr(s.size))
		if s.closed.Load() {
			ls.err = mem.Munmap(p, uintptr(ls.n))
			return
		}
		ls.err = mem.ReserveOver(p, uintptr(ls.n))
		if ls.err == nil {
			s.lent = 0
		}
	})
	return ls.err
}
