package mirror

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

// The tests in the core_kernel_* files assert, one by one, what the kernel does with the
// mremap duplicate (mremap(old, 0, n, MREMAP_MAYMOVE[|MREMAP_FIXED], new)) on the running
// machine, with raw system calls, and then what this package does about it.

// dup is the raw duplicate system call, without the safety net of package mem.
func dup(old mem.Pointer, n int, flags int, dst mem.Pointer) (mem.Pointer, error) {
	return unix.MremapPtr(old, 0, dst, uintptr(n), flags)
}

// rawMap maps n bytes and unmaps them when the test ends.
func rawMap(t *testing.T, n, prot, flags, fd int) []byte {
	t.Helper()
	p, err := mem.Mmap(nil, uintptr(n), prot, flags, fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Munmap(p, uintptr(n)) })
	return mem.Slice(p, n)
}

func rawShared(t *testing.T, n int) []byte {
	t.Helper()
	return rawMap(t, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1)
}

func unmapLater(t *testing.T, p mem.Pointer, n int) {
	t.Cleanup(func() { mem.Munmap(p, uintptr(n)) })
}

func vmasOf(t *testing.T, b []byte) []mem.VMA {
	t.Helper()
	a := addr(b)
	v, err := mem.FindVMAs(a, a+uintptr(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func memfd(t *testing.T, name string, n int) int {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(n)); err != nil {
		t.Fatal(err)
	}
	return fd
}

// sharesPages checks that a and b are the same memory, both ways.
func sharesPages(t *testing.T, a, b []byte) {
	t.Helper()
	for i := 0; i < len(a); i += 1024 {
		a[i] = byte(i/1024 + 1)
		if b[i] != a[i] {
			t.Fatalf("byte %d written through one view reads %d through the other, want %d", i, b[i], a[i])
		}
		b[i+1] = byte(i/1024 + 7)
		if a[i+1] != b[i+1] {
			t.Fatalf("byte %d written through the other view reads %d through the first", i+1, a[i+1])
		}
	}
}

// Shared anonymous memory, a memfd and a regular file mapped MAP_SHARED can all be
// duplicated: the new mapping shows the same pages. Of accepts each of them.
func TestKernelDuplicateKinds(t *testing.T) {
	n := 4 * alloc.PageSize()
	rw := unix.PROT_READ | unix.PROT_WRITE
	for _, tc := range []struct {
		name string
		mk   func(t *testing.T) ([]byte, int)
		kind string
	}{
		{"shared anonymous", func(t *testing.T) ([]byte, int) { return rawShared(t, n), -1 }, "/dev/zero"},
		{"memfd", func(t *testing.T) ([]byte, int) {
			fd := memfd(t, "kernel-kinds", n)
			return rawMap(t, n, rw, unix.MAP_SHARED, fd), fd
		}, "/memfd:kernel-kinds"},
		{"regular file", func(t *testing.T) ([]byte, int) {
			f, err := os.Create(t.TempDir() + "/regular")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			if err := f.Truncate(int64(n)); err != nil {
				t.Fatal(err)
			}
			var fs unix.Statfs_t
			if unix.Fstatfs(int(f.Fd()), &fs) == nil && (fs.Type == unix.TMPFS_MAGIC) {
				t.Logf("note: the temporary directory is on tmpfs, so this file is shmem too")
			}
			return rawMap(t, n, rw, unix.MAP_SHARED, int(f.Fd())), int(f.Fd())
		}, "/regular"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, fd := tc.mk(t)
			if l := mapsLine(t, addr(b)); !strings.Contains(l, tc.kind) || !strings.Contains(l, "rw-s") {
				t.Fatalf("source mapping %q is not a shared %s mapping", l, tc.kind)
			}
			p, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE, nil)
			if err != nil {
				t.Fatalf("kernel: duplicate of a shared %s mapping: %v", tc.name, err)
			}
			unmapLater(t, p, n)
			view := mem.Slice(p, n)
			sharesPages(t, b, view)
			if fd >= 0 {
				// Writes through the file descriptor reach both views too.
				if _, err := unix.Pwrite(fd, []byte{0xa5}, 3000); err != nil {
					t.Fatal(err)
				}
				if b[3000] != 0xa5 || view[3000] != 0xa5 {
					t.Fatalf("pwrite of 0xa5 at 3000: views read %#x and %#x", b[3000], view[3000])
				}
			}
			defer unchanged(t)()
			pair, err := Of(b)
			if err != nil {
				t.Fatalf("library: Of on a shared %s mapping: %v", tc.name, err)
			}
			sharesPages(t, pair.Original(), pair.Mirror())
			sharesPages(t, view, pair.Mirror())
			t.Logf("Of: backend %v", pair.Backend())
			if err := pair.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Without MREMAP_MAYMOVE a duplicate fails with ENOMEM (not EINVAL, as the man page says);
// MREMAP_DONTUNMAP with old size 0 fails with EINVAL. The package always passes MAYMOVE and
// never DONTUNMAP (checked under a seccomp filter in TestLibraryNeverMakesForbiddenCalls).
func TestKernelDuplicateFlags(t *testing.T) {
	n := 2 * alloc.PageSize()
	b := rawShared(t, n)
	defer unchanged(t)()
	if p, err := dup(mem.Ptr(b), n, 0, nil); !errors.Is(err, unix.ENOMEM) {
		if err == nil {
			mem.Munmap(p, uintptr(n))
		}
		t.Fatalf("duplicate without MREMAP_MAYMOVE: %v, want ENOMEM", err)
	}
	if p, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE|unix.MREMAP_DONTUNMAP, nil); !errors.Is(err, unix.EINVAL) {
		if err == nil {
			mem.Munmap(p, uintptr(n))
		}
		t.Fatalf("duplicate with MREMAP_DONTUNMAP: %v, want EINVAL", err)
	}
}

// MREMAP_FIXED with new_addr == old_addr unmaps the destination, which is the source, then
// finds no source: the source mapping is gone and the call returns EFAULT. Shown on a
// throwaway mapping; TestNeverMapOverSource and TestLibraryNeverMakesForbiddenCalls show
// the package never does it.
func TestKernelFixedOntoSourceDestroysIt(t *testing.T) {
	defer unchanged(t)()
	n := 2 * alloc.PageSize()
	p, err := mem.Mmap(nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Munmap(p, uintptr(n)) // a no-op if the kernel destroyed it, as expected
	mem.Slice(p, n)[0] = 1
	if _, err := dup(p, n, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, p); !errors.Is(err, unix.EFAULT) {
		t.Fatalf("MREMAP_FIXED onto the source: %v, want EFAULT", err)
	}
	if v := vmasOf(t, mem.Slice(p, n)); len(v) != 0 {
		t.Fatalf("the source survived (%+v): the kernel no longer destroys it", v)
	}
}

// numberedPages maps a 4-page memfd named name, shared, whose page i holds first+i in its
// first byte.
func numberedPages(t *testing.T, name string, first byte) []byte {
	t.Helper()
	ps := alloc.PageSize()
	b := rawMap(t, 4*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED, memfd(t, name, 4*ps))
	for i := 0; i < 4; i++ {
		b[i*ps] = first + byte(i)
	}
	return b
}

// MREMAP_FIXED with new_addr < old_addr < new_addr+new_size is EINVAL and harmless; a new_addr
// inside the source above old_addr is allowed and replaces that part of the source.
func TestKernelFixedOverlap(t *testing.T) {
	ps := alloc.PageSize()
	b := numberedPages(t, "overlap", 10)
	// Source pages 2..3, destination pages 1..2: the destination starts below the source and
	// reaches into it.
	if _, err := dup(mem.Ptr(b[2*ps:]), 2*ps, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, mem.Ptr(b[ps:])); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("destination below and overlapping the source: %v, want EINVAL", err)
	}
	if b[ps] != 11 || b[2*ps] != 12 || len(vmasOf(t, b)) != 1 {
		t.Fatal("a refused overlapping duplicate changed the mapping")
	}
	// Source pages 0..1, destination pages 1..2: allowed, object pages 0..1 now show at 1..2.
	p, err := dup(mem.Ptr(b), 2*ps, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, mem.Ptr(b[ps:]))
	if err != nil || p != mem.Ptr(b[ps:]) {
		t.Fatalf("destination inside the source, above it: %v, want success", err)
	}
	if got := []byte{b[0], b[ps], b[2*ps], b[3*ps]}; string(got) != string([]byte{10, 10, 11, 13}) {
		t.Fatalf("pages read %v, want [10 10 11 13]: the duplicate overwrote pages 1..2 with object pages 0..1", got)
	}
	if v := vmasOf(t, b); len(v) != 3 || v[1].Offset != 0 || v[2].Offset != uint64(3*ps) {
		t.Fatalf("areas after the overlapping duplicate: %+v", v)
	}
}

// A MREMAP_FIXED duplicate that the kernel refuses leaves the destination mapped and intact
// (6.17+ checks before unmapping the destination; older kernels unmapped it first, which is
// why mem.Mremap duplicates first and then moves onto the destination there). The package's
// own duplicates into an Adjacent layout go through mem.Mremap.
func TestKernelRejectedFixedKeepsDestination(t *testing.T) {
	ps := alloc.PageSize()
	dst := rawShared(t, 2*ps)
	dst[ps] = 99
	resv, err := mem.Reserve(uintptr(2 * ps))
	if err != nil {
		t.Fatal(err)
	}
	unmapLater(t, resv, 2*ps)
	gone, err := mem.Reserve(uintptr(2 * ps))
	if err != nil {
		t.Fatal(err)
	}
	mem.Munmap(gone, uintptr(2*ps))
	huge := hugetlbMapping(t)
	for _, src := range []struct {
		name string
		p    mem.Pointer
		want error
	}{{"unmapped source", gone, unix.EFAULT}, {"hugetlb source", mem.Ptr(huge), unix.EINVAL}} {
		for _, d := range []struct {
			name string
			p    mem.Pointer
			line string
		}{{"shared mapping", mem.Ptr(dst), "rw-s"}, {"reservation", resv, "---p"}} {
			if _, err := dup(src.p, 2*ps, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, d.p); !errors.Is(err, src.want) {
				t.Fatalf("%s into a %s: %v, want %v", src.name, d.name, err, src.want)
			}
			v := vmasOf(t, mem.Slice(d.p, 2*ps))
			if len(v) != 1 || v[0].Start != mem.Addr(d.p) || v[0].Perms[:4] != d.line[:4] {
				t.Fatalf("%s refused: the %s destination is now %+v (wiped before validation: kernel older than 6.17?)", src.name, d.name, v)
			}
		}
	}
	if dst[ps] != 99 {
		t.Fatal("the destination's contents changed")
	}
}

// hugetlbMapping maps 2 MiB of shared anonymous hugetlb memory with MAP_NORESERVE, which works
// with no huge pages reserved (touching it would then SIGBUS; the tests never touch it).
func hugetlbMapping(t *testing.T) []byte {
	t.Helper()
	const n = 2 << 20
	p, err := mem.Mmap(nil, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB|unix.MAP_NORESERVE, -1, 0)
	if errors.Is(err, unix.EINVAL) {
		t.Skipf("kernel without hugetlb support (CONFIG_HUGETLBFS) or without 2 MiB pages: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	unmapLater(t, p, n)
	return mem.Slice(p, n)
}

// hugetlb memory cannot be duplicated (EINVAL on every kernel), anonymous or memfd; Of says
// ErrUnsupported, naming hugetlb, before calling mremap.
func TestKernelHugetlb(t *testing.T) {
	const n = 2 << 20
	anon := hugetlbMapping(t)
	fd, err := unix.MemfdCreate("huge", unix.MFD_CLOEXEC|unix.MFD_HUGETLB)
	if err != nil {
		t.Fatalf("memfd_create(MFD_HUGETLB): %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, n); err != nil {
		t.Fatal(err)
	}
	file := rawMap(t, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE, fd)
	for _, b := range [][]byte{anon, file} {
		if p, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE, nil); !errors.Is(err, unix.EINVAL) {
			if err == nil {
				mem.Munmap(p, n)
			}
			t.Fatalf("kernel: duplicate of hugetlb memory (%s): %v, want EINVAL", mapsLine(t, addr(b)), err)
		}
		done := unchanged(t)
		pair, err := Of(b)
		done()
		if err == nil {
			pair.Close()
			t.Fatal("library: Of on hugetlb memory succeeded")
		}
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "hugetlb") || errors.Is(err, unix.EINVAL) {
			t.Fatalf("library: Of on hugetlb memory: %v\nwant ErrUnsupported naming hugetlb, found before mremap (no EINVAL)", err)
		}
	}
}

// Duplicating a sub-range maps the object at the matching offset.
func TestKernelSubRangeOffset(t *testing.T) {
	ps := alloc.PageSize()
	b := numberedPages(t, "subrange", 20)
	p, err := dup(mem.Ptr(b[ps:]), 2*ps, unix.MREMAP_MAYMOVE, nil)
	if err != nil {
		t.Fatal(err)
	}
	unmapLater(t, p, 2*ps)
	view := mem.Slice(p, 2*ps)
	if v := vmasOf(t, view); len(v) != 1 || v[0].Offset != uint64(ps) || view[0] != 21 || view[ps] != 22 {
		t.Fatalf("kernel: duplicate of pages 1..2: area %+v, pages read %d %d, want offset %d and 21 22", v, view[0], view[ps], ps)
	}
	defer unchanged(t)()
	pair, err := Of(b[ps : 3*ps])
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	m := pair.Mirror()
	if v := vmasOf(t, m); len(v) != 1 || v[0].Offset != uint64(ps) || m[0] != 21 || m[ps] != 22 {
		t.Fatalf("library: mirror of pages 1..2: area %+v, pages read %d %d", v, m[0], m[ps])
	}
}

// present reports, per page of b, whether this process's page table maps it
// (/proc/self/pagemap bit 63), which mincore cannot tell for shmem (it reports the page cache).
func present(t *testing.T, b []byte) []bool {
	t.Helper()
	ps := alloc.PageSize()
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 8*(len(b)/ps))
	if _, err := f.ReadAt(buf, int64(addr(b)/uintptr(ps))*8); err != nil {
		t.Fatal(err)
	}
	out := make([]bool, len(b)/ps)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(buf[8*i:])>>63 != 0
	}
	return out
}

func countTrue(v []bool) int {
	n := 0
	for _, x := range v {
		if x {
			n++
		}
	}
	return n
}

// Page tables are not copied: a new view has no pages mapped until it is touched, even where
// every page is in the page cache. If the source is mlocked, the new view is populated at once.
func TestKernelPageTablesNotCopied(t *testing.T) {
	const pages = 8
	ps := alloc.PageSize()
	n := pages * ps
	r := region(t, func() (*alloc.Region, error) { return alloc.Shared(n) })
	b := r.Bytes()
	for i := 0; i < n; i += ps {
		b[i] = 1
	}
	if c := countTrue(present(t, b)); c != pages {
		t.Fatalf("source: %d of %d pages mapped after writing each", c, pages)
	}
	p, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE, nil)
	if err != nil {
		t.Fatal(err)
	}
	unmapLater(t, p, n)
	view := mem.Slice(p, n)
	if c := countTrue(present(t, view)); c != 0 {
		t.Fatalf("kernel: a fresh duplicate has %d pages mapped, want 0", c)
	}
	view[3*ps] = 2 // a write fault on a shared mapping maps that page only (no fault-around)
	if got := present(t, view); countTrue(got) != 1 || !got[3] {
		t.Fatalf("kernel: after writing page 3 of the duplicate, mapped pages %v", got)
	}
	pair, err := Mirror(r)
	if err != nil {
		t.Fatal(err)
	}
	if c := countTrue(present(t, pair.Mirror())); c != 0 {
		t.Fatalf("library: a new mirror view has %d pages mapped, want 0", c)
	}
	pair.Close()

	if err := unix.Mlock(b); err != nil {
		t.Fatalf("mlock: %v", err)
	}
	defer unix.Munlock(b)
	p2, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE, nil)
	if err != nil {
		t.Fatal(err)
	}
	unmapLater(t, p2, n)
	if c := countTrue(present(t, mem.Slice(p2, n))); c != pages {
		t.Fatalf("kernel: a duplicate of an mlocked source has %d of %d pages mapped, want all", c, pages)
	}
	defer unchanged(t)()
	pair, err = Mirror(r)
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	if c := countTrue(present(t, pair.Mirror())); c != pages {
		t.Fatalf("library: a mirror of an mlocked region has %d of %d pages mapped, want all", c, pages)
	}
}

// Each view is one VMA (one line of /proc/self/maps), adjacent or not.
func TestKernelOneVMAPerView(t *testing.T) {
	ps := alloc.PageSize()
	n := 4 * ps
	b := rawShared(t, n)
	before := len(objectVMAs(t, b))
	p, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE, nil)
	if err != nil {
		t.Fatal(err)
	}
	unmapLater(t, p, n)
	if after := len(objectVMAs(t, b)); after != before+1 {
		t.Fatalf("kernel: one duplicate took %d areas, want 1", after-before)
	}
	defer unchanged(t)()
	for _, opts := range [][]Option{{Views(4)}, {Views(4), Adjacent()}} {
		r := region(t, func() (*alloc.Region, error) { return alloc.Shared(n) })
		before := len(objectVMAs(t, r.Bytes()))
		pair, err := Mirror(r, opts...)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < pair.NumViews(); i++ {
			if v := vmasOf(t, pair.View(i)); len(v) != 1 || v[0].Start != addr(pair.View(i)) || v[0].End != addr(pair.View(i))+uintptr(n) {
				t.Fatalf("library %d views: view %d is areas %+v, want exactly one", pair.NumViews(), i, v)
			}
		}
		made := pair.NumViews() - 1
		if addr(pair.Original()) != r.Addr() {
			made++ // Adjacent found no room after the region and made every view anew
		}
		if got := len(objectVMAs(t, pair.Original())) - before; got != made {
			t.Fatalf("library: %d views added %d shared areas, want %d", pair.NumViews(), got, made)
		}
		if c := pair.Contiguous(); c != nil {
			if v := vmasOf(t, c); len(v) != pair.NumViews() {
				t.Fatalf("library: the adjacent layout is %d areas, want %d", len(v), pair.NumViews())
			}
		}
		pair.Close()
		r.Close()
	}
}

// objectVMAs returns the shared areas that map the same object as b: other tests and the
// runtime may map shared memory meanwhile, so areas are counted per object, not in total.
func objectVMAs(t *testing.T, b []byte) []mem.VMA {
	t.Helper()
	own := vmasOf(t, b)
	if len(own) == 0 {
		t.Fatalf("no area maps %#x", addr(b))
	}
	all, err := mem.FindVMAs(0, ^uintptr(0))
	if err != nil {
		t.Fatal(err)
	}
	var out []mem.VMA
	for _, v := range all {
		if v.Shared() && v.Dev == own[0].Dev && v.Inode == own[0].Inode {
			out = append(out, v)
		}
	}
	return out
}
