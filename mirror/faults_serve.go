package mirror

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/internal/mem"
	"github.com/mirrormem/mirrormem/uffd"
)

// serving is the fault serving of one pair: one userfaultfd with every view registered, and
// the handler that serves it.
type serving struct {
	u       *uffd.UFFD
	views   []uintptr // the addresses of mem
	mem     [][]byte  // every view registered, the caller's own mapping included
	n       int
	srcLen  int64 // bytes of the source that the pages hold; past them pages are zeros
	serving bool  // the handler started: Close must retire the views (see stop)
	mode    uffd.Mode
	hidden  int  // index in views of the caller's own mapping when Adjacent moved the original, else -1
	asyncWP bool // TrackWritesAsync: the kernel resolves write-protect faults
	kind    Handler
	src     io.ReaderAt
	srcKind string // for messages

	h   *fault.Handler // native or process
	fds []int          // descriptors this pair duplicated for the handler

	wd *fault.Watchdog // HandlerGo: aborts the program, with a message, if serving hangs

	push bool // Restore pushes every page

	mu      sync.Mutex
	stopped bool
}

// startServing registers the views and starts the handler, in steps: the views, where the
// bytes come from, who serves them, the userfaultfd, a check that the memory is fresh, the
// registration, and the handler. On error nothing is left behind.
func (s *state) startServing(cfg *config, src *source) (err error) {
	f := &cfg.faults
	sv, err := newServing(s, src, f.src)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			sv.stop(-1, false)
		}
	}()
	fc, goSource, err := sv.describeSource(s, f)
	if err != nil {
		return err
	}
	if err := sv.checkNotSelf(f.src, fc); err != nil {
		return err
	}
	goSrc, err := sv.chooseHandler(s, f, &fc, goSource)
	if err != nil {
		return err
	}
	if err := sv.openUFFD(f, &fc, src); err != nil {
		return err
	}
	if err := sv.checkFresh(s); err != nil {
		return err
	}
	if err := sv.register(); err != nil {
		return err
	}
	if err := sv.startHandler(fc, goSrc, f); err != nil {
		return err
	}
	s.faults = sv
	return nil
}

// newServing lists the views to register: the pair's, and the caller's own mapping when
// Adjacent laid the views out anew.
func newServing(s *state, src *source, from io.ReaderAt) (*serving, error) {
	sv := &serving{n: s.n, src: from, srcKind: fmt.Sprintf("%T", from)}
	for _, v := range s.views {
		sv.views = append(sv.views, mem.Addr(mem.Ptr(v)))
		sv.mem = append(sv.mem, v)
	}
	sv.hidden = -1
	if orig := mem.Addr(src.ptr); orig != sv.views[0] {
		// Adjacent had to lay every view out anew: the caller's own mapping (r.Bytes() for
		// Mirror, b for Of) still shows the same memory, so it is registered and served too,
		// its counts added to the original's.
		sv.hidden = len(sv.views)
		sv.views = append(sv.views, orig)
		sv.mem = append(sv.mem, mem.Slice(src.ptr, s.n))
	}
	if len(sv.views) > fault.MaxViews {
		return nil, fmt.Errorf("%w: ServeFaults serves at most %d views, not %d", ErrOption, fault.MaxViews, len(sv.views))
	}
	return sv, nil
}

// describeSource tells where the bytes come from: the handler's configuration for the source,
// and whether it is Go code (no descriptor to read).
func (sv *serving) describeSource(s *state, f *faultConfig) (fc fault.Config, goSource bool, err error) {
	fc = fault.Config{Len: s.n, AliasFD: -1, LogCap: f.logCap, SourceLen: int64(s.n)}
	if f.src != nil && isNilPointer(f.src) {
		return fc, false, fmt.Errorf("%w: ServeFaults(%s(nil)): a nil pointer is not a source; pass nil itself (ServeFaults(nil)) for zero-filled pages", ErrOption, sv.srcKind)
	}
	switch rr := f.src.(type) {
	case nil:
		fc.Source = fault.SourceZero
	case *namedSource:
		if _, err := rr.registration(); err != nil {
			return fc, false, err
		}
		fc.Source, fc.SourceName, fc.SourceConfig = fault.SourceNamed, rr.name, rr.config
		fc.Workers = namedWorkers
		sv.srcKind = fmt.Sprintf("NamedSource(%q)", rr.name)
	case *regionReader:
		v := rr.r
		if v == nil {
			return fc, false, fmt.Errorf("%w: ServeFaults(RegionSource(nil)): a nil *alloc.Region is not a source; pass ServeFaults(nil) for zero-filled pages", ErrOption)
		}
		if v == s.region || (v.Bytes() != nil && s.region != nil && mem.Ptr(v.Bytes()) == mem.Ptr(s.region.Bytes())) {
			return fc, false, fmt.Errorf("%w: ServeFaults: the source is the region being mirrored", ErrRange)
		}
		b := v.Bytes()
		if b == nil {
			return fc, false, fmt.Errorf("%w: ServeFaults: the source region is closed", ErrClosed)
		}
		fc.SourceLen = int64(min(len(b), s.n))
		if fd := v.Fd(); fd >= 0 {
			if fc.SourceFD, err = sv.dup(fd); err != nil {
				return fc, false, err
			}
			fc.Source = fault.SourceFD
		} else {
			fc.Source = fault.SourceMem
			fc.SourceAddr = mem.Addr(mem.Ptr(b))
		}
	default:
		fd, hasFd, why := preadableFd(f.src)
		if !hasFd {
			goSource = true
			break
		}
		if why != "" {
			name := sv.srcKind
			if file, isFile := f.src.(*os.File); isFile {
				name = file.Name()
			}
			return fc, false, fmt.Errorf("%w: ServeFaults(%s): pread(2) cannot read its descriptor: %s", ErrUnsupported, name, why)
		}
		if fc.SourceFD, err = sv.dup(fd); err != nil {
			return fc, false, err
		}
		fc.Source = fault.SourceFD
		if fc.SourceLen, err = sourceSize(fd, s.n); err != nil {
			return fc, false, err
		}
	}
	return fc, goSource, nil
}

// chooseHandler decides who serves the pair (sv.kind) from the option, the source and Restore,
// and refuses combinations that cannot work. It returns the source a HandlerGo engine reads
// itself, if any.
func (sv *serving) chooseHandler(s *state, f *faultConfig, fc *fault.Config, goSource bool) (goSrc io.ReaderAt, err error) {
	sv.kind = f.handler
	if goSource && sv.kind == HandlerAuto {
		return nil, fmt.Errorf("%w: ServeFaults(%s): register it in an init function, RegisterSource(\"name\", open), "+
			"then pass ServeFaults(NamedSource(\"name\", config))", ErrGoSource, sv.srcKind)
	}
	if fc.Source == fault.SourceNamed {
		switch sv.kind {
		case HandlerAuto:
			sv.kind = HandlerProcess
		case HandlerNative:
			return nil, fmt.Errorf("%w: ServeFaults(%s): a source that is Go code is served by a handler process, not by the C thread (HandlerNative)", ErrOption, sv.srcKind)
		}
	}
	if restoring := f.restore.WorkingSet != nil || f.restore.Push; restoring {
		// The C thread does not prefetch: the engine does.
		switch sv.kind {
		case HandlerAuto:
			sv.kind = HandlerProcess
		case HandlerNative:
			return nil, fmt.Errorf("%w: Restore: the C thread (HandlerNative) does not prefetch; use HandlerAuto, HandlerProcess or HandlerGo", ErrOption)
		}
		if fc.Restore, err = restoreConfig(f.restore, s.n, len(s.views)); err != nil {
			return nil, err
		}
		sv.push = f.restore.Push
	}
	if sv.kind == HandlerAuto {
		switch {
		case fault.NativeAvailable:
			sv.kind = HandlerNative
		default:
			sv.kind = HandlerProcess
		}
	}
	if goSource && sv.kind != HandlerGo {
		return nil, fmt.Errorf("%w: ServeFaults(%s): this source is Go code (no file descriptor to read), which only WithHandler(HandlerGo) can serve", ErrGoSource, sv.srcKind)
	}
	if sv.kind == HandlerGo {
		if !fault.NativeAvailable {
			return nil, fmt.Errorf("%w: ServeFaults(%s): HandlerGo needs cgo, whose watchdog catches a fault that hangs the program under GC: use a NamedSource, or build with cgo",
				ErrUnsupported, sv.srcKind)
		}
	}
	if sv.kind == HandlerGo && (goSource || fc.Source == fault.SourceMem || fc.Source == fault.SourceNamed) {
		goSrc = f.src // a named source is built in this process, as Verify builds it
		if fc.Source == fault.SourceNamed {
			fc.Source = fault.SourceZero
		}
	}
	if sv.kind == HandlerProcess && fc.Source == fault.SourceMem {
		// A handler process reaches a region without descriptor through map_files.
		fd, err := openMapFile(mem.Ptr(f.src.(*regionReader).r.Bytes()))
		if err != nil {
			return nil, fmt.Errorf("%w: ServeFaults: a handler process reads an alloc.Shared source through /proc/self/map_files, which failed (%v): use alloc.Memfd, or cgo", ErrUnsupported, err)
		}
		sv.fds = append(sv.fds, fd)
		fc.Source, fc.SourceFD = fault.SourceFD, fd
	}

	return goSrc, nil
}

// openUFFD opens the pair's userfaultfd with what the kernel offers and the options ask for.
func (sv *serving) openUFFD(f *faultConfig, fc *fault.Config, src *source) error {
	page := mem.PageSize()
	avail, err := uffd.Available()
	if err != nil {
		return fmt.Errorf("%w: ServeFaults: %w", ErrUnsupported, err)
	}
	if avail&uffd.FeatureMissingShmem == 0 {
		return fmt.Errorf("%w: ServeFaults: userfaultfd on shared memory needs Linux 4.11 (UFFD_FEATURE_MISSING_SHMEM)", ErrUnsupported)
	}
	want := uffd.FeatureMissingShmem | avail&(uffd.FeatureThreadID|uffd.FeatureMinorShmem|uffd.FeaturePoison|uffd.FeatureEventRemove)
	sv.mode = uffd.ModeMissing
	if avail&uffd.FeatureMinorShmem != 0 {
		sv.mode |= uffd.ModeMinor
	}
	if f.staging {
		if avail&uffd.FeatureMinorShmem == 0 {
			return fmt.Errorf("%w: StageMinorFaults: minor faults on shmem need Linux 5.14 (UFFD_FEATURE_MINOR_SHMEM)", ErrUnsupported)
		}
		if src.region == nil || src.region.Fd() < 0 {
			return fmt.Errorf("%w: StageMinorFaults stages pages through the region's memfd: mirror an alloc.Memfd region with Mirror", ErrUnsupported)
		}
		if fc.AliasFD, err = sv.dup(src.region.Fd()); err != nil {
			return err
		}
	}
	if f.trackWrites {
		if avail&uffd.FeatureWPHugetlbfsShmem == 0 {
			return fmt.Errorf("%w: TrackWrites: write-protect on shmem needs Linux 5.19 (UFFD_FEATURE_WP_HUGETLBFS_SHMEM)", ErrUnsupported)
		}
		want |= uffd.FeatureWPHugetlbfsShmem | uffd.FeaturePagefaultFlagWP
		sv.mode |= uffd.ModeWP
		if f.trackAsync {
			if avail&uffd.FeatureWPAsync == 0 {
				return fmt.Errorf("%w: TrackWritesAsync: write-protect faults resolved by the kernel need Linux 6.7 (UFFD_FEATURE_WP_ASYNC); use TrackWrites", ErrUnsupported)
			}
			if sv.kind == HandlerGo {
				return fmt.Errorf("%w: TrackWritesAsync needs a handler outside Go", ErrUnsupported)
			}
			want |= uffd.FeatureWPAsync | avail&uffd.FeatureWPUnpopulated
			sv.asyncWP = true
		}
	}
	uopts := []uffd.Option{uffd.WithFeatures(want)}
	if sv.kind != HandlerGo {
		// Read by a handler outside this program's Go code: in the runtime poller, every
		// fault would also wake a thread of this program for nothing.
		uopts = append(uopts, uffd.WithoutPoller())
	}
	if sv.u, err = uffd.New(uopts...); err != nil {
		return fmt.Errorf("ServeFaults: %w", err)
	}
	fc.UFFD = sv.u
	fc.Views = sv.views
	fc.Poison = sv.u.Features()&uffd.FeaturePoison != 0
	fc.MaxAround = DefaultFaultAround / page
	if f.around >= 0 {
		fc.MaxAround = max(f.around/page, 1)
	}

	return nil
}

// checkFresh refuses memory whose pages already hold data: they would never be asked of the
// source, as every view maps them silently, and the source would be bypassed behind a Verify
// that passes.
func (sv *serving) checkFresh(s *state) error {
	page := mem.PageSize()
	vec := make([]byte, s.n/page)
	if err := mem.Mincore(mem.Ptr(s.views[0]), uintptr(len(s.views[0])), vec); err != nil {
		return fmt.Errorf("ServeFaults: %w", err)
	}
	resident, first := 0, -1
	for i, b := range vec {
		if b&1 != 0 {
			if first < 0 {
				first = i
			}
			resident++
		}
	}
	if resident > 0 {
		return fmt.Errorf("%w: ServeFaults: %d of %d pages already hold data (the first at offset %d): mirror fresh memory, or free them first (MADV_REMOVE)",
			ErrResident, resident, len(vec), first*page)
	}
	// The caller's own mapping may carry the poisoned holes a previous pair's Close left (see
	// stop): nothing is resident (checked above), so dropping its page-table entries
	// (MADV_DONTNEED) removes only those, and this pair serves those pages again.
	keep := sv.mem[0]
	if sv.hidden >= 0 {
		keep = sv.mem[sv.hidden]
	}
	if err := mem.Madvise(mem.Ptr(keep), uintptr(s.n), unix.MADV_DONTNEED); err != nil {
		return fmt.Errorf("ServeFaults: %w", err)
	}
	return nil
}

// register registers every view with the userfaultfd.
func (sv *serving) register() error {
	for i, a := range sv.views {
		if err := sv.u.Register(a, sv.n, sv.mode); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("%w: ServeFaults: registering view %d: userfaultfd serves anonymous and shared memory (shmem, memfd) only, not a shared file mapping: %w", ErrUnsupported, i, err)
			}
			return fmt.Errorf("ServeFaults: registering view %d: %w", i, err)
		}
	}

	return nil
}

// startHandler starts the chosen handler and records how many of the source's bytes the pages hold.
func (sv *serving) startHandler(fc fault.Config, goSrc io.ReaderAt, f *faultConfig) (err error) {
	switch sv.kind {
	case HandlerNative:
		sv.h, err = fault.StartNative(fc)
	case HandlerProcess:
		sv.h, err = fault.StartProcess(fc, fault.ProcessOptions{})
	case HandlerGo:
		err = startGoServing(sv, fc, goSrc, f)
	}
	if err != nil {
		return fmt.Errorf("ServeFaults: %w", err)
	}
	sv.serving = true
	if sv.kind != HandlerGo || sv.src == nil {
		sv.srcLen = fc.SourceLen
		if fc.Source == fault.SourceZero {
			sv.srcLen = 0
		}
	} else {
		sv.srcLen = int64(sv.n) // a Go source's length is unknown: every page may have bytes
	}
	return nil
}

func (sv *serving) dup(fd int) (int, error) {
	nfd, err := mem.DupCloexec(fd)
	if err != nil {
		return -1, fmt.Errorf("ServeFaults: duplicating descriptor %d: %w", fd, err)
	}
	sv.fds = append(sv.fds, nfd)
	return nfd, nil
}

// namedWorkers is how many goroutines of a handler process serve a named source: a source that
// waits (a network round trip) is read for several fault-around windows at once.
const namedWorkers = 4

// RegionSource makes a region the source of ServeFaults: pages are copied from it (a native
// handler copies straight from its memory; a handler process reads its memfd). Its ReadAt
// copies from the region, for any other use.
func RegionSource(r *alloc.Region) io.ReaderAt { return &regionReader{r} }

type regionReader struct{ r *alloc.Region }

func (s *regionReader) ReadAt(p []byte, off int64) (int, error) {
	if s.r == nil {
		return 0, fmt.Errorf("%w: RegionSource(nil).ReadAt", ErrRange)
	}
	b := s.r.Bytes()
	if b == nil {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("mirror: RegionSource.ReadAt: negative offset %d", off)
	}
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// preadableFd returns the descriptor of a source that has one (hasFd), and why pread(2)
// cannot read it ("" if it can). Decided without reading a byte: creating the pair reads
// nothing from the source.
func preadableFd(src io.ReaderAt) (fd int, hasFd bool, why string) {
	switch v := src.(type) {
	case interface{ Fd() uintptr }:
		fd = int(v.Fd())
	case interface{ Fd() int }:
		fd = v.Fd()
	default:
		return -1, false, ""
	}
	if fd < 0 {
		return -1, true, "it is closed"
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return -1, true, "it is closed"
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	switch {
	case err != nil:
		return -1, true, "it is closed"
	case fl&unix.O_PATH != 0:
		return -1, true, "it was opened with O_PATH, which allows no reads: open the file for reading"
	case fl&unix.O_ACCMODE == unix.O_WRONLY:
		return -1, true, "it is write-only: open the file for reading"
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFBLK:
	case unix.S_IFDIR:
		return -1, true, "it is a directory"
	default:
		return -1, true, "it is a pipe, socket or device, which has no offsets"
	}
	// A read of nothing checks what the flags cannot (a file system that refuses reads).
	if _, err := unix.Pread(fd, nil, 0); err != nil {
		return -1, true, fmt.Sprintf("a read of nothing fails (%v)", err)
	}
	return fd, true, ""
}

// sourceSize returns how many bytes of the source at fd a view of n bytes uses: its size now,
// at most n. Pages past it are served as zeros; a source that shrinks below it later fails
// loudly (the pages it no longer has are poisoned), never reads as zeros.
func sourceSize(fd, n int) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("ServeFaults: %w", os.NewSyscallError("fstat", err))
	}
	size := st.Size
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		sz, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
		if err != nil {
			return 0, fmt.Errorf("ServeFaults: the size of block device: %w", os.NewSyscallError("ioctl(BLKGETSIZE64)", err))
		}
		size = int64(sz)
	}
	return min(max(size, 0), int64(n)), nil
}

func openMapFile(p mem.Pointer) (int, error) {
	a := mem.Addr(p)
	vmas, err := mem.FindVMAs(a, a+1)
	if err != nil {
		return -1, err
	}
	if len(vmas) == 0 {
		return -1, fmt.Errorf("%#x is not mapped", a)
	}
	return mem.OpenMapFile(vmas[0], unix.O_RDONLY)
}

// stop stops serving and closes the userfaultfd. keep is the index in sv.views of the one view
// that outlives the pair (the caller's own mapping: r.Bytes() without CloseRegion, or Of's b),
// or -1; poisonHoles says whether that view's pages the source never filled must fail loudly
// from now on.
//
// A goroutine may be touching the views meanwhile, even waiting in a fault: it must get its
// page or fail loudly, never read zeros, and Close must not wait for it (a goroutine stuck in a
// fault may hold a P that Close would need). So, while the handler still serves: every view
// that goes away with the pair becomes inaccessible (PROT_NONE) and its waiters are woken, to
// fault again and crash (SIGSEGV, or EFAULT inside a system call); the view that stays has its
// holes poisoned (UFFDIO_POISON: SIGBUS) where the source had bytes for them, and is
// unregistered, which wakes its waiters: each gets its page, its SIGBUS, or (a zero source)
// its zeros. Only then is the handler stopped, within a bounded time, and the userfaultfd
// closed.
func (sv *serving) stop(keep int, poisonHoles bool) error {
	sv.mu.Lock()
	if sv.stopped {
		sv.mu.Unlock()
		return nil
	}
	sv.stopped = true
	sv.mu.Unlock()
	var errs []error
	if sv.serving {
		errs = append(errs, sv.retire(keep, poisonHoles))
	}
	if sv.wd != nil {
		sv.wd.Stop()
	}
	if sv.h != nil {
		errs = append(errs, sv.h.Stop())
	}
	if sv.u != nil {
		errs = append(errs, sv.u.Close())
	}
	for _, fd := range sv.fds {
		errs = append(errs, unix.Close(fd))
	}
	sv.fds = nil
	if ns, ok := sv.src.(*namedSource); ok {
		ns.Close() // what Verify built in this process (an HTTP client's connections, say)
	}
	return errors.Join(errs...)
}

// retire makes the views safe to leave unserved (see stop).
func (sv *serving) retire(keep int, poisonHoles bool) error {
	var errs []error
	for i, b := range sv.mem {
		if i != keep {
			errs = append(errs, mem.Mprotect(mem.Ptr(b), uintptr(sv.n), unix.PROT_NONE))
		}
	}
	if keep >= 0 {
		if poisonHoles && sv.u.Features()&uffd.FeaturePoison != 0 {
			errs = append(errs, sv.poisonHoles(sv.mem[keep]))
		}
		if err := sv.u.Unregister(sv.views[keep], sv.n); err != nil {
			errs = append(errs, fmt.Errorf("mirror: Close: %w", err))
		}
	}
	for i, a := range sv.views {
		if i != keep {
			sv.u.Wake(a, sv.n) // nobody waiting is the usual case, not an error
		}
	}
	return errors.Join(errs...)
}

// poisonHoles poisons the pages of the view at a that are in no page cache (never filled) and
// that the source has bytes for: touched after Close, they raise SIGBUS instead of reading as
// zeros. A page the handler fills meanwhile answers EEXIST and is skipped.
func (sv *serving) poisonHoles(b []byte) error {
	a := mem.Addr(mem.Ptr(b))
	page := mem.PageSize()
	limit, stalls := sv.srcLen, 0
	vec := make([]byte, sv.n/page)
	if err := mem.Mincore(mem.Ptr(b), uintptr(len(b)), vec); err != nil {
		return fmt.Errorf("mirror: Close: %w", err)
	}
	for pg := 0; pg < len(vec); {
		if vec[pg]&1 != 0 || int64(pg*page) >= limit {
			pg++
			continue
		}
		end := pg
		for end < len(vec) && vec[end]&1 == 0 && int64(end*page) < limit {
			end++
		}
		done, err := sv.u.Poison(a+uintptr(pg*page), (end-pg)*page, uffd.DontWake)
		switch {
		case err == nil:
			pg = end
		case errors.Is(err, unix.EEXIST):
			pg += max(done, 0)/page + 1 // filled meanwhile: go on past it
		case errors.Is(err, unix.EAGAIN) && done > 0:
			pg += done / page
		case errors.Is(err, unix.EAGAIN) && stalls < 1000:
			stalls++ // an event is pending, which the handler reads
		default:
			return fmt.Errorf("mirror: Close: poisoning the pages never filled: %w", err)
		}
	}
	return nil
}

func (sv *serving) stats(i int) FaultStats {
	st := sv.viewStats(i)
	if i == 0 && sv.hidden >= 0 {
		h := sv.viewStats(sv.hidden)
		st.Missing += h.Missing
		st.Minor += h.Minor
		st.WP += h.WP
		st.Filled += h.Filled
		st.Mapped += h.Mapped
		st.Exists += h.Exists
		st.Bytes += h.Bytes
		st.Rescued += h.Rescued
	}
	return st
}

func (sv *serving) viewStats(i int) FaultStats {
	if sv.h != nil {
		s := sv.h.Stats()
		if i >= len(s.Views) {
			return FaultStats{}
		}
		v := s.Views[i]
		return FaultStats{Missing: v.Missing, Minor: v.Minor, WP: v.WP, Filled: v.Copied + v.Zeroed + v.Staged,
			Mapped: v.Continued - v.Staged, Exists: v.EEXIST, Bytes: v.Bytes, Rescued: v.Rescued}
	}
	return FaultStats{}
}

// isNilPointer reports a typed nil (a nil pointer, map, slice, channel or function behind a
// non-nil interface), which would crash the first ReadAt.
func isNilPointer(src io.ReaderAt) bool {
	v := reflect.ValueOf(src)
	switch v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Chan, reflect.Func, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// checkNotSelf refuses a source that is the memory being served: its bytes would come from
// pages that are themselves waiting to be filled (a handler faulting on its own range hangs;
// one reading the object's holes through a file descriptor gets zeros).
func (sv *serving) checkNotSelf(src io.ReaderAt, fc fault.Config) error {
	vmas, err := mem.FindVMAs(sv.views[0], sv.views[0]+1)
	if err != nil || len(vmas) == 0 {
		return fmt.Errorf("ServeFaults: finding the mapping of view 0: %v", err)
	}
	v0 := vmas[0]
	objOff := int64(v0.Offset) + int64(sv.views[0]-v0.Start)
	same := func(dev string, ino uint64, off, n int64) bool {
		return v0.Inode != 0 && dev == v0.Dev && ino == v0.Inode && off < objOff+int64(sv.n) && objOff < off+n
	}
	switch rr := src.(type) {
	case *regionReader:
		b := rr.r.Bytes()
		if b == nil {
			return nil // closed: refused by the caller
		}
		a, n := mem.Addr(mem.Ptr(b)), uintptr(len(b))
		for i, v := range sv.views {
			if a < v+uintptr(sv.n) && v < a+n {
				return fmt.Errorf("%w: ServeFaults: the source region [%#x, +%d) overlaps view %d at %#x: a page would be filled from itself", ErrRange, a, n, i, v)
			}
		}
		if vm, err := mem.FindVMAs(a, a+1); err == nil && len(vm) > 0 {
			off := int64(vm[0].Offset) + int64(a-vm[0].Start)
			if same(vm[0].Dev, vm[0].Inode, off, int64(n)) {
				return fmt.Errorf("%w: ServeFaults: the source region is another mapping of the memory being served (the same object, overlapping offsets): a page would be filled from itself", ErrRange)
			}
		}
	default:
		if fc.Source != fault.SourceFD {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Fstat(fc.SourceFD, &st); err != nil {
			return fmt.Errorf("ServeFaults: %w", os.NewSyscallError("fstat", err))
		}
		dev := fmt.Sprintf("%02x:%02x", unix.Major(st.Dev), unix.Minor(st.Dev))
		if same(dev, st.Ino, fc.SourceOff, fc.SourceLen) {
			return fmt.Errorf("%w: ServeFaults(%s): the source is the file (memfd) being served, at overlapping offsets: its unfilled pages would be read as zeros", ErrRange, sv.srcKind)
		}
	}
	return nil
}
