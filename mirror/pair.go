package mirror

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

// Pair is a set of views of the same memory: the original and one or more mirrors. It is safe
// for concurrent use; the slices it returns are valid until Close.
//
// Call Close when done: the slices do not keep the Pair alive, and a Pair that becomes
// unreachable without Close is never unmapped behind the slices' back (its views, and with
// ServeFaults its userfaultfd and fault handler, stay as they are and leak, and a one-line
// warning is printed to standard error).
type Pair struct {
	s       *state
	cleanup runtime.Cleanup
}

// span is a mapping this package made and must undo.
type span struct {
	p mem.Pointer
	n uintptr
}

// state is everything a Pair owns, apart from the Pair so that its cleanup can release it.
type state struct {
	n          int
	views      [][]byte
	contiguous []byte
	backend    Backend

	// What Close releases, in this order (see teardown).
	loose  []span        // views mapped wherever the kernel chose (not Adjacent)
	resv   span          // a reservation this pair made; the views inside go with it
	lease  *alloc.Lease  // room borrowed from the region; Release restores its reservation
	region *alloc.Region // keeps the region (and its cleanup) away while the views exist
	owns   bool          // Close closes the region too (CloseRegion), set once create succeeded

	// mu: methods that use the views or the fault handler's memory hold the read side; the
	// first Close takes the write side before it stops anything or unmaps.
	mu        sync.RWMutex
	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool

	faults *serving // ServeFaults: the userfaultfd and its handler
}

// Mirror maps the memory of r a second time (or n-1 more times, with Views(n)) and returns the
// views. Original() is r.Bytes() (unless Adjacent had to move it, see Adjacent); writes through
// any view are seen through all of them, since they are the same pages.
//
// Close the Pair before the Region: the Pair's views of the region stay valid after the
// region's Close (the pages live on while a view maps them), but Original() is the region's
// own mapping and is gone with it.//
// Call Close when done; the slices do not keep the Pair alive (see Pair).
func Mirror(r *alloc.Region, opts ...Option) (*Pair, error) {
	cfg := newConfig(opts)
	if cfg.err != nil {
		return nil, &Error{Op: "mirror.Mirror", Err: cfg.err}
	}
	src, err := regionSource(r)
	if err != nil {
		return nil, err
	}
	return create(src, cfg)
}

// Of mirrors memory that did not come from package alloc: any page-aligned range of one
// MAP_SHARED mapping (anonymous shared memory, a memfd, a shared file mapping), a sub-range
// included; the mirror shows the object at the same offset. It reads /proc/self/maps to refuse,
// before calling mremap, private memory (ErrNotShared; the Go heap is private), unmapped
// memory (ErrNotMapped), hugetlb (ErrUnsupported), a range spanning several mappings or not
// page aligned (ErrRange) and a range past the end of its object (ErrPastObject).
//
// The caller keeps b mapped until the Pair is closed.//
// Call Close when done; the slices do not keep the Pair alive (see Pair).
func Of(b []byte, opts ...Option) (*Pair, error) {
	cfg := newConfig(opts)
	if cfg.err != nil {
		return nil, &Error{Op: "mirror.Of", Addr: mem.Addr(mem.Ptr(b)), Len: len(b), Err: cfg.err}
	}
	src, err := sliceSource(b, cfg.backend, cfg.backendSet)
	if err != nil {
		return nil, err
	}
	defer src.closeFd()
	return create(src, cfg)
}

// create is the one place where a Pair comes to life: the views are made, then afterViews
// runs (fault serving registers every view there) before anything is returned. On any error
// everything made so far is undone by teardown.
func create(src *source, cfg *config) (*Pair, error) {
	s := &state{n: src.n, region: src.region}
	if err := s.makeViews(src, cfg); err != nil {
		s.unmap()
		return nil, src.fail(err)
	}
	if err := s.afterViews(src, cfg); err != nil {
		s.teardown()
		return nil, src.fail(err)
	}
	s.owns = cfg.closeRegion && src.region != nil
	p := &Pair{s: s}
	p.cleanup = runtime.AddCleanup(p, leaked, s)
	return p, nil
}

// makeViews picks the backend and lays the views out. The default backend falls back to the
// memfd one when the kernel refuses the duplicate and a descriptor is at hand.
func (s *state) makeViews(src *source, cfg *config) error {
	backend := cfg.backend
	if backend == BackendMemfd && src.fd < 0 {
		return fmt.Errorf("%w: BackendMemfd maps the memory's file descriptor, and %v memory has none: use alloc.Memfd, or the default BackendDuplicate",
			ErrUnsupported, src.kind)
	}
	if backend == BackendDuplicate && src.kind == alloc.KindHugeTLB {
		if cfg.backendSet || src.fd < 0 {
			return errHugeTLB
		}
		backend = BackendMemfd
	}
	err := s.layout(src, cfg, backend)
	if err != nil && backend == BackendDuplicate && !cfg.backendSet && src.fd >= 0 && refused(err) {
		if uerr := s.unmap(); uerr != nil {
			return errors.Join(err, uerr)
		}
		*s = state{n: src.n, region: src.region}
		backend = BackendMemfd
		err = s.layout(src, cfg, backend)
	}
	if err != nil {
		if backend == BackendDuplicate {
			return classify(err)
		}
		return err
	}
	s.backend = backend
	return nil
}

// layout makes views 1..k (and view 0 where the original must move, see Adjacent).
func (s *state) layout(src *source, cfg *config, backend Backend) error {
	n := uintptr(src.n)
	k := cfg.views - 1
	s.views = make([][]byte, cfg.views)
	s.views[0] = mem.Slice(src.ptr, src.n)
	if !cfg.adjacent {
		for i := 1; i <= k; i++ {
			p, err := mapView(src, nil, backend)
			if err != nil {
				return err
			}
			s.loose = append(s.loose, span{p, n})
			s.views[i] = mem.Slice(p, src.n)
		}
		return nil
	}
	if k > 0 && n > ^uintptr(0)/uintptr(cfg.views) {
		return fmt.Errorf("%w: %d views of %d bytes overflow the address space", ErrRange, cfg.views, n)
	}
	room := n * uintptr(k)
	first := 1 // views first..k are mapped into the room after view 0
	var base mem.Pointer
	switch {
	case src.region != nil && src.region.Room() >= int(room):
		if l, err := src.region.Lend(int(room)); err == nil {
			s.lease = l
			base = mem.Ptr(l.Bytes())
		}
	}
	if base == nil {
		end := mem.Add(src.ptr, n)
		ok, err := mem.ReserveAt(end, room)
		if err != nil {
			return err
		}
		if ok {
			s.resv = span{end, room}
			base = end
		}
	}
	if base == nil {
		// No room after the original: reserve the whole layout and make every view anew.
		p, err := mem.Reserve(n * uintptr(cfg.views))
		if err != nil {
			return err
		}
		s.resv = span{p, n * uintptr(cfg.views)}
		base = p
		first = 0
	}
	for i := first; i <= k; i++ {
		dst := base
		if first == 1 {
			dst = mem.Add(base, uintptr(i-1)*n)
		} else {
			dst = mem.Add(base, uintptr(i)*n)
		}
		p, err := mapView(src, dst, backend)
		if err != nil {
			return err
		}
		s.views[i] = mem.Slice(p, src.n)
	}
	s.contiguous = mem.Slice(mem.Ptr(s.views[0]), src.n*cfg.views)
	return nil
}

// mapView makes one view of src: at dst (which this package owns) with the FIXED flags, or
// wherever the kernel likes if dst is nil.
func mapView(src *source, dst mem.Pointer, backend Backend) (mem.Pointer, error) {
	n := uintptr(src.n)
	if dst != nil && overlaps(dst, src.ptr, n) {
		// MREMAP_FIXED onto the source destroys it (and returns EFAULT); the layouts above cannot
		// produce this, and this check keeps it that way.
		return nil, fmt.Errorf("%w: refusing to map a view at %#x over its own source at %#x", ErrRange, mem.Addr(dst), mem.Addr(src.ptr))
	}
	if backend == BackendMemfd {
		flags := unix.MAP_SHARED
		if dst != nil {
			flags |= unix.MAP_FIXED
		}
		return mem.Mmap(dst, n, src.prot, flags, src.fd, src.off)
	}
	flags := unix.MREMAP_MAYMOVE
	if dst != nil {
		flags |= unix.MREMAP_FIXED
	}
	return mem.Mremap(src.ptr, 0, n, flags, dst)
}

func overlaps(a, b mem.Pointer, n uintptr) bool {
	x, y := mem.Addr(a), mem.Addr(b)
	return x < y+n && y < x+n
}

// Original returns the first view (the region's own memory, unless Adjacent had to move it).
// It returns nil after Close.
func (p *Pair) Original() []byte { return p.View(0) }

// Mirror returns the second view. It returns nil after Close.
func (p *Pair) Mirror() []byte { return p.View(1) }

// View returns view i, 0 <= i < NumViews(); View(0) is Original() and View(1) Mirror(). It
// returns nil after Close and panics if i is out of range.//
// Call Close when done; the slices do not keep the Pair alive (see Pair).
func (p *Pair) View(i int) []byte {
	if p.s.closed.Load() {
		return nil
	}
	return p.s.views[i]
}

// NumViews returns the number of views, the original included (2 unless Views was given).
func (p *Pair) NumViews() int { return len(p.s.views) }

// Len returns the size of one view in bytes.
func (p *Pair) Len() int { return p.s.n }

// Contiguous returns all views as one slice of NumViews()*Len() bytes when the pair was made
// with Adjacent, and nil otherwise (or after Close). Byte i and byte i+Len() are the same
// memory: see the package documentation on aliasing.//
// Call Close when done; the slices do not keep the Pair alive (see Pair).
func (p *Pair) Contiguous() []byte {
	if p.s.closed.Load() {
		return nil
	}
	return p.s.contiguous
}

// Backend returns the backend that made the mirror views.
func (p *Pair) Backend() Backend { return p.s.backend }

// Close unmaps the views this package made and gives back borrowed room; it closes the
// Region only if the Pair was made with CloseRegion. A second Close returns nil (the first
// one's error is not repeated). Slices obtained from the Pair must not be used after Close.
//
// With ServeFaults, Close returns within a bounded time whatever the handlers do, and a
// goroutine that touches a view meanwhile crashes rather than read zeros in place of the
// source's bytes; pages of the region's own mapping that the source never filled are poisoned
// (they raise SIGBUS; MADV_REMOVE, or Reset of a new pair, clears them). See ServeFaults.
func (p *Pair) Close() error {
	err := p.s.teardown()
	p.cleanup.Stop()
	return err
}

// teardown runs once: beforeUnmap (fault serving stops and unregisters the views), then
// unmap.
func (s *state) teardown() error {
	first := false
	s.closeOnce.Do(func() {
		first = true
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closed.Store(true)
		s.closeErr = errors.Join(s.beforeUnmap(), s.unmap())
	})
	if !first {
		return nil
	}
	return s.closeErr
}

// unmap releases the mappings in a fixed order: loose views, then this pair's own
// reservation (with the views inside it), then the borrowed room, which gets its PROT_NONE
// reservation back, or, with CloseRegion, goes away with the region in one munmap. It is also
// how a failed create undoes its work (owns is not set yet then: the caller keeps its region).
func (s *state) unmap() error {
	var e1, e2, e3 error
	for _, v := range s.loose {
		e1 = errors.Join(e1, mem.Munmap(v.p, v.n))
	}
	s.loose = nil
	if s.resv.p != nil {
		e2 = mem.Munmap(s.resv.p, s.resv.n)
		s.resv = span{}
	}
	switch {
	case s.owns && s.lease != nil:
		e3 = s.region.CloseWith(s.lease)
	case s.owns:
		e3 = s.region.Close()
	case s.lease != nil:
		e3 = s.lease.Release()
	}
	s.lease = nil
	s.region = nil
	return errors.Join(e1, e2, e3)
}

// leakWarning prints the warning of a Pair collected without Close (a variable for tests).
var leakWarning = func(s *state) {
	fmt.Fprintf(os.Stderr, "mirrormem: a mirror.Pair of %d views of %d bytes at %#x became unreachable without Close: its mappings (and fault handler, if any) leak; call Close when done (the slices it returned do not keep it alive)\n",
		len(s.views), s.n, mem.Addr(mem.Ptr(s.views[0])))
}

// leaked is the cleanup of a Pair that was never closed. It must not unmap anything nor stop
// fault serving: the slices the Pair returned do not keep it reachable and may still be in use
// (unmapping them would turn later accesses into crashes or, once the addresses are reused,
// silent corruption; closing the userfaultfd would turn later faults into silent zero pages).
// So it only warns.
func leaked(s *state) {
	if !s.closed.Load() {
		leakWarning(s)
	}
}
