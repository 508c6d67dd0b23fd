package mirror

import (
	"errors"
	"fmt"
	"os"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

// source is the memory to mirror, checked: shared, page aligned, inside one mapping and inside
// its backing object.
type source struct {
	op     string
	ptr    mem.Pointer
	n      int
	prot   int
	fd     int   // descriptor of the backing object, -1 if none is at hand
	ownFd  bool  // fd was opened for this call and is closed once the views exist
	off    int64 // offset of ptr in the backing object
	region *alloc.Region
	kind   alloc.Kind
}

func (src *source) fail(err error) *Error {
	return &Error{Op: src.op, Addr: mem.Addr(src.ptr), Len: src.n, Err: err}
}

func (src *source) closeFd() {
	if src.ownFd && src.fd >= 0 {
		unix.Close(src.fd)
		src.fd = -1
		src.ownFd = false
	}
}

// regionSource trusts what alloc knows about its own Region; the only thing that can have
// changed behind its back is the size of a memfd (ftruncate), so that is checked with fstat.
func regionSource(r *alloc.Region) (*source, error) {
	const op = "mirror.Mirror"
	if r == nil {
		return nil, &Error{Op: op, Err: fmt.Errorf("%w: nil *alloc.Region", ErrRange)}
	}
	b := r.Bytes()
	if b == nil {
		return nil, &Error{Op: op, Len: r.Len(), Err: ErrClosed}
	}
	src := &source{op: op, ptr: mem.Ptr(b), n: len(b), prot: unix.PROT_READ | unix.PROT_WRITE,
		fd: r.Fd(), region: r, kind: r.Kind()}
	if src.fd >= 0 {
		var st unix.Stat_t
		if err := unix.Fstat(src.fd, &st); err != nil {
			return nil, src.fail(os.NewSyscallError("fstat", err))
		}
		if st.Size < int64(src.n) {
			return nil, src.fail(fmt.Errorf("%w: the region's %v object is now %d bytes, the region %d: a view would raise SIGBUS past the end",
				ErrPastObject, src.kind, st.Size, src.n))
		}
	}
	return src, nil
}

// sliceSource finds the mapping behind b in /proc/self/maps and refuses, before any mremap,
// everything the kernel would refuse or that would fault later.
func sliceSource(b []byte, backend Backend, backendSet bool) (*source, error) {
	const op = "mirror.Of"
	ps := mem.PageSize()
	src := &source{op: op, ptr: mem.Ptr(b), n: len(b), fd: -1}
	addr := mem.Addr(src.ptr)
	switch {
	case len(b) == 0:
		return nil, src.fail(fmt.Errorf("%w: empty slice", ErrRange))
	case addr%uintptr(ps) != 0 || len(b)%ps != 0:
		return nil, src.fail(fmt.Errorf("%w: start (+%d) and length (+%d) are not multiples of the page size %d: allocate with alloc.Shared",
			ErrRange, addr%uintptr(ps), len(b)%ps, ps))
	}
	end := addr + uintptr(len(b))
	vmas, err := mem.FindVMAs(addr, end)
	if err != nil {
		return nil, src.fail(err)
	}
	if len(vmas) == 0 {
		return nil, src.fail(fmt.Errorf("%w: no mapping covers this range", ErrNotMapped))
	}
	for i, v := range vmas {
		prev := addr
		if i > 0 {
			prev = vmas[i-1].End
		}
		if v.Start > prev {
			return nil, src.fail(fmt.Errorf("%w: [%#x, %#x) inside the range is not mapped", ErrNotMapped, prev, v.Start))
		}
	}
	if last := vmas[len(vmas)-1]; last.End < end {
		return nil, src.fail(fmt.Errorf("%w: [%#x, %#x) at the end of the range is not mapped", ErrNotMapped, last.End, end))
	}
	v := vmas[0]
	if !v.Shared() {
		what := "a private file mapping of " + v.Path
		if v.Path == "" || v.Path[0] == '[' {
			what = "private anonymous memory (the Go heap, make([]byte), MAP_PRIVATE|MAP_ANONYMOUS mmap)"
		}
		return nil, src.fail(fmt.Errorf("%w: the range is %s; the kernel cannot duplicate private memory (each view would be copy-on-write): allocate with alloc.Shared or alloc.Memfd",
			ErrNotShared, what))
	}
	if len(vmas) > 1 {
		return nil, src.fail(fmt.Errorf("%w: the range spans %d mappings (%#x-%#x %s and more); mirror each mapping separately",
			ErrRange, len(vmas), v.Start, v.End, v.Path))
	}
	if v.HugeTLBPath() {
		return nil, src.fail(errHugeTLB)
	}
	src.prot = v.Prot()
	src.off = int64(v.Offset) + int64(addr-v.Start)

	// The size of the backing object and its file system (hugetlbfs?) come from the object
	// itself, reached through /proc/self/map_files. Without the privilege that needs, the
	// range is known to lie inside its mapping, which is all the kernel can tell us then.
	flags := unix.O_RDONLY
	if src.prot&unix.PROT_WRITE != 0 {
		flags = unix.O_RDWR
	}
	fd, err := mem.OpenMapFile(v, flags)
	if err != nil {
		if backendSet && backend == BackendMemfd {
			return nil, src.fail(fmt.Errorf("%w: BackendMemfd needs the mapping's file, and it cannot be opened: %w", ErrUnsupported, err))
		}
		return src, nil
	}
	src.fd, src.ownFd = fd, true
	var fs unix.Statfs_t
	var st unix.Stat_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		src.closeFd()
		return nil, src.fail(os.NewSyscallError("fstatfs", err))
	}
	if uint32(fs.Type) == unix.HUGETLBFS_MAGIC {
		src.closeFd()
		return nil, src.fail(errHugeTLB)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		src.closeFd()
		return nil, src.fail(os.NewSyscallError("fstat", err))
	}
	if need := src.off + int64(src.n); need > st.Size {
		src.closeFd()
		return nil, src.fail(fmt.Errorf("%w: the range ends at offset %d of %s, which is %d bytes long: touching past its end would raise SIGBUS",
			ErrPastObject, need, v.Path, st.Size))
	}
	switch uint32(fs.Type) {
	case unix.TMPFS_MAGIC:
		src.kind = alloc.KindMemfd
		if v.Path == "/dev/zero (deleted)" {
			src.kind = alloc.KindShared
		}
	default:
		src.kind = alloc.KindFile
	}
	return src, nil
}

var errHugeTLB = fmt.Errorf("%w: hugetlb memory: mremap cannot duplicate it; map its file twice instead (WithBackend(BackendMemfd), alloc.FromFD)", ErrUnsupported)

// classify turns the errno of a refused duplicate into the package's sentinels.
func classify(err error) error {
	switch {
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%w: the kernel refused to duplicate this mapping (hugetlb or another type mremap cannot duplicate): %w", ErrUnsupported, err)
	case errors.Is(err, unix.EFAULT):
		return fmt.Errorf("%w: the mapping cannot be duplicated (VM_DONTEXPAND or VM_PFNMAP, as device memory): %w", ErrUnsupported, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: the mapping is sealed (mseal, 6.10+): %w", ErrUnsupported, err)
	case errors.Is(err, unix.ENOMEM):
		return fmt.Errorf("out of address space or mappings (vm.max_map_count): %w", err)
	case errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("locked-memory limit (RLIMIT_MEMLOCK) exceeded: %w", err)
	}
	return err
}

// refused reports whether a failed duplicate is a refusal that another backend may not meet.
func refused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EFAULT) || errors.Is(err, unix.EPERM)
}
