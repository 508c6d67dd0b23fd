package alloc

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

// PageSize returns the size of a base page of the running kernel (4096 on x86-64). Region
// sizes are rounded up to it.
func PageSize() int { return mem.PageSize() }

// Kind says what object backs a Region.
type Kind int

const (
	// KindShared is anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS): no file descriptor.
	KindShared Kind = iota + 1
	// KindMemfd is a memfd or another shmem/tmpfs file; Fd returns its descriptor.
	KindMemfd
	// KindHugeTLB is a hugetlbfs file (MFD_HUGETLB memfd or a file on hugetlbfs).
	KindHugeTLB
	// KindFile is a file of any other file system, mapped MAP_SHARED.
	KindFile
)

// String names the kind of memory, as error messages show it.
func (k Kind) String() string {
	switch k {
	case KindShared:
		return "shared anonymous"
	case KindMemfd:
		return "memfd/shmem"
	case KindHugeTLB:
		return "hugetlbfs"
	case KindFile:
		return "file"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Region is a page-aligned range of shared memory, optionally followed by reserved address
// space (WithRoom). It is safe for concurrent use.
type Region struct {
	s       *state
	cleanup runtime.Cleanup
}

// state is everything a Region owns, kept apart from the Region so the cleanup can release it.
//
// Layout: [base, base+size) the shared memory, [base+size, base+size+room) the room
// (PROT_NONE), of which the first lent bytes are handed to a Lease.
type state struct {
	base   mem.Pointer
	size   int
	room   int
	fd     int // -1 for KindShared
	kind   Kind
	closed atomic.Bool

	mu    sync.Mutex // guards lent, stale, fd and the release of the mappings
	lent  int
	stale int // bytes at the start of the room whose reservation a failed release could not restore
}

// roundUp rounds n up to whole pages; ok is false if n <= 0 or the result overflows.
func roundUp(n int) (int, bool) {
	ps := mem.PageSize()
	if n <= 0 || n > math.MaxInt-ps+1 {
		return 0, false
	}
	return (n + ps - 1) &^ (ps - 1), true
}

func sizes(op string, size int, c *config) (n, room int, err error) {
	if c.err != nil {
		return 0, 0, &Error{Op: op, Size: size, Err: c.err}
	}
	n, ok := roundUp(size)
	if !ok {
		why := "must be positive"
		if size > 0 {
			why = "overflows when rounded up to pages"
		}
		return 0, 0, &Error{Op: op, Size: size, Err: fmt.Errorf("%w: size %d %s", ErrSize, size, why)}
	}
	if c.room > 0 {
		room, ok = roundUp(c.room)
		if !ok || room > math.MaxInt-n {
			return 0, 0, &Error{Op: op, Size: size, Err: fmt.Errorf("%w: size %d plus room %d overflows", ErrSize, size, c.room)}
		}
	}
	return n, room, nil
}

func newConfig(opts []Option) *config {
	c := &config{}
	for i, o := range opts {
		if o == nil {
			c.err = fmt.Errorf("%w: option %d is nil", ErrInvalid, i+1)
			continue
		}
		o(c)
	}
	return c
}

// Shared allocates size bytes (rounded up to pages) of anonymous shared memory
// (MAP_SHARED|MAP_ANONYMOUS, read and write). The pages are zero and use no memory until
// touched (see Populate).
func Shared(size int, opts ...Option) (*Region, error) {
	c := newConfig(opts)
	n, room, err := sizes("alloc.Shared", size, c)
	if err != nil {
		return nil, err
	}
	return newRegion("alloc.Shared", size, n, room, -1, KindShared, c)
}

// Memfd allocates size bytes (rounded up to pages) of memory backed by a new memfd
// (memfd_create with MFD_CLOEXEC; name is shown in /proc/self/maps as "/memfd:name"). The
// Region owns the descriptor; Fd returns it, for example to pass it to another process.
func Memfd(name string, size int, opts ...Option) (*Region, error) {
	const op = "alloc.Memfd"
	c := newConfig(opts)
	n, room, err := sizes(op, size, c)
	if err != nil {
		return nil, err
	}
	if err := memfdName(name); err != nil {
		return nil, &Error{Op: op, Size: size, Err: err}
	}
	fd, err := mem.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, &Error{Op: op, Size: size, Err: err}
	}
	if err := unix.Ftruncate(fd, int64(n)); err != nil {
		unix.Close(fd)
		return nil, &Error{Op: op, Size: size, Err: os.NewSyscallError("ftruncate", err)}
	}
	return newRegion(op, size, n, room, fd, KindMemfd, c)
}

// FromFD maps a shared-memory object from a file descriptor, typically a memfd received from
// another process over a Unix socket (SCM_RIGHTS) or inherited through exec, with MAP_SHARED,
// read and write, from offset 0. size 0 means the object's whole size (fstat); a size larger
// than the object is refused, because touching past its end raises SIGBUS.
//
// FromFD does not take ownership of fd: it duplicates it (close-on-exec) and the Region owns
// and closes the duplicate. Close your own fd whenever you like, right after FromFD included.
// The kind of the Region comes from the fd's file system: shmem/tmpfs (memfd) gives KindMemfd.
func FromFD(fd int, size int, opts ...Option) (*Region, error) {
	const op = "alloc.FromFD"
	c := newConfig(opts)
	if size < 0 {
		return nil, &Error{Op: op, Size: size, Err: fmt.Errorf("%w: size %d is negative (0 means the whole object)", ErrSize, size)}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &Error{Op: op, Size: size, Err: os.NewSyscallError("fstat", err)}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &Error{Op: op, Size: size, Err: fmt.Errorf("%w: fd %d is not a regular or memfd file (mode %#o): only files can be mapped shared", ErrUnsupported, fd, st.Mode)}
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_ACCMODE != unix.O_RDWR {
		return nil, &Error{Op: op, Size: size, Err: fmt.Errorf("%w: fd %d is not open for reading and writing (FromFD maps the object read-write, MAP_SHARED)", ErrUnsupported, fd)}
	}
	if size == 0 {
		size = int(st.Size)
		if size == 0 {
			return nil, &Error{Op: op, Size: size, Err: fmt.Errorf("%w: the object behind fd %d is empty", ErrSize, fd)}
		}
	}
	if size > 0 && int64(size) > st.Size {
		return nil, &Error{Op: op, Size: size, Err: fmt.Errorf("%w: larger than the object behind fd %d (%d bytes): touching past its end would raise SIGBUS", ErrSize, fd, st.Size)}
	}
	n, room, err := sizes(op, size, c)
	if err != nil {
		return nil, err
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return nil, &Error{Op: op, Size: size, Err: os.NewSyscallError("fstatfs", err)}
	}
	kind := KindFile
	switch uint32(fs.Type) {
	case unix.TMPFS_MAGIC:
		kind = KindMemfd
	case unix.HUGETLBFS_MAGIC:
		kind = KindHugeTLB
	}
	dup, err := mem.DupCloexec(fd)
	if err != nil {
		return nil, &Error{Op: op, Size: size, Err: err}
	}
	return newRegion(op, size, n, room, dup, kind, c)
}

// newRegion maps the memory (and the room) and applies the options. It owns fd from the
// start: on failure it closes it and unmaps everything it mapped.
func newRegion(op string, size, n, room, fd int, kind Kind, c *config) (*Region, error) {
	fail := func(err error) (*Region, error) {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, &Error{Op: op, Size: size, Err: err}
	}
	flags := unix.MAP_SHARED
	if fd < 0 {
		flags |= unix.MAP_ANONYMOUS
	}
	var base mem.Pointer
	var err error
	if room == 0 {
		base, err = mem.Mmap(nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, flags, fd, 0)
		if err != nil {
			return fail(err)
		}
	} else {
		// Reserve everything first, then map the memory over the start of our own
		// reservation: no other thread can take the room in between.
		base, err = mem.Reserve(uintptr(n + room))
		if err != nil {
			return fail(err)
		}
		if _, err = mem.Mmap(base, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, flags|unix.MAP_FIXED, fd, 0); err != nil {
			mem.Munmap(base, uintptr(n+room))
			return fail(err)
		}
	}
	s := &state{base: base, size: n, room: room, fd: fd, kind: kind}
	if err := s.apply(c); err != nil {
		mem.Munmap(base, uintptr(n+room))
		return fail(err)
	}
	r := &Region{s: s}
	r.cleanup = runtime.AddCleanup(r, func(s *state) { s.abandon() }, s)
	return r, nil
}

// abandon is the cleanup of a Region that became unreachable without Close. Slices returned
// by Bytes do not keep the Region alive and may still be in use, so it never unmaps: it
// closes the descriptor (the mapping keeps the object alive) and warns that the mapping leaks.
func (s *state) abandon() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return
	}
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
	}
	leakWarning(fmt.Sprintf("alloc: a %v Region of %d bytes at %#x became unreachable before Close: its mapping leaks (keep the Region reachable while its memory is used, and call Close)",
		s.kind, s.size, mem.Addr(s.base)))
}

// memfdName refuses the names memfd_create(2) would refuse with a bare EINVAL.
func memfdName(name string) error {
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%w: memfd name %q contains a NUL byte", ErrInvalid, name)
	}
	if len(name) > 249 {
		return fmt.Errorf("%w: memfd name of %d bytes: the kernel allows at most 249", ErrInvalid, len(name))
	}
	return nil
}

var errNilRegion = fmt.Errorf("%w: nil *Region, or one not made by alloc.Shared, alloc.Memfd or alloc.FromFD", ErrInvalid)

// st returns the region's state, or nil for a nil or zero-value Region.
func (r *Region) st() *state {
	if r == nil {
		return nil
	}
	return r.s
}

func (s *state) apply(c *config) error {
	if c.hugePages {
		if err := hugePagesAllowed(); err != nil {
			return err
		}
		if err := mem.Madvise(s.base, uintptr(s.size), unix.MADV_HUGEPAGE); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("%w: MADV_HUGEPAGE refused (kernel built without transparent huge pages?): %w", ErrUnsupported, err)
			}
			return err
		}
	}
	if c.populate {
		if err := mem.Madvise(s.base, uintptr(s.size), unix.MADV_POPULATE_WRITE); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("%w: pre-population needs MADV_POPULATE_WRITE (Linux 5.14): %w", ErrUnsupported, err)
			}
			return fmt.Errorf("populating the pages: %w", err)
		}
	}
	return nil
}

// Bytes returns the region's memory, Len bytes, page aligned. It returns nil after Close.
//
// The slice does not keep the Region alive: keep the Region reachable for as long as the
// memory is used, and call Close when done. A Region that becomes unreachable without Close
// is not unmapped (slices may still point to it): its mapping leaks and a warning is printed.
func (r *Region) Bytes() []byte {
	s := r.st()
	if s == nil || s.closed.Load() {
		return nil
	}
	return mem.Slice(s.base, s.size)
}

// Addr returns the address of the region's first byte (0 after Close).
func (r *Region) Addr() uintptr {
	s := r.st()
	if s == nil || s.closed.Load() {
		return 0
	}
	return mem.Addr(s.base)
}

// Len returns the region's size in bytes: the size asked for, rounded up to pages.
func (r *Region) Len() int {
	if s := r.st(); s != nil {
		return s.size
	}
	return 0
}

// Room returns the bytes of address space reserved right after the region (WithRoom).
func (r *Region) Room() int {
	if s := r.st(); s != nil {
		return s.room
	}
	return 0
}

// Kind says what backs the region.
func (r *Region) Kind() Kind {
	if s := r.st(); s != nil {
		return s.kind
	}
	return 0
}

// Fd returns the file descriptor of the object behind the region (memfd, or the duplicate
// made by FromFD), or -1 for Shared memory, which has none. The Region owns it: do not close
// it; it is closed by Close, after which Fd returns -1.
func (r *Region) Fd() int {
	s := r.st()
	if s == nil {
		return -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return -1
	}
	return s.fd
}

// Close unmaps the region and its unlent room and closes its descriptor. A second Close
// returns nil. Room lent with Lend stays mapped until the Lease is released. Slices returned
// by Bytes must not be used after Close.
func (r *Region) Close() error {
	if r.st() == nil {
		return &Error{Op: "alloc.Region.Close", Err: errNilRegion}
	}
	err := r.s.release()
	r.cleanup.Stop()
	return err
}

func (s *state) release() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.releaseLocked()
}

func (s *state) releaseLocked() error {
	if s.closed.Load() {
		return nil
	}
	s.closed.Store(true)
	var e1, e2, e3 error
	if s.lent == 0 {
		e1 = mem.Munmap(s.base, uintptr(s.size+s.room))
	} else {
		e1 = mem.Munmap(s.base, uintptr(s.size))
		if rest := s.room - s.lent; rest > 0 {
			e2 = mem.Munmap(mem.Add(s.base, uintptr(s.size+s.lent)), uintptr(rest))
		}
	}
	if s.fd >= 0 {
		if err := unix.Close(s.fd); err != nil {
			e3 = os.NewSyscallError("close", err)
		}
		s.fd = -1
	}
	return errors.Join(e1, e2, e3)
}

// leakWarning prints the one-line warning of a cleanup that found a Region or Lease
// unreachable before Close or Release. Tests replace it.
var leakWarning = func(msg string) { fmt.Fprintln(os.Stderr, msg) }
