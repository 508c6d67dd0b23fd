package mem

import (
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestParseMapsLine(t *testing.T) {
	for _, tc := range []struct {
		line   string
		want   VMA
		shared bool
		huge   bool
	}{
		{"7f0000000000-7f0000002000 rw-s 00001000 00:01 1234                       /dev/zero (deleted)",
			VMA{Start: 0x7f0000000000, End: 0x7f0000002000, Perms: "rw-s", Offset: 0x1000, Dev: "00:01", Inode: 1234, Path: "/dev/zero (deleted)"}, true, false},
		{"c000000000-c000400000 rw-p 00000000 00:00 0 ",
			VMA{Start: 0xc000000000, End: 0xc000400000, Perms: "rw-p", Dev: "00:00"}, false, false},
		{"7f0000000000-7f0000200000 rw-s 00000000 00:0f 99 /anon_hugepage (deleted)",
			VMA{Start: 0x7f0000000000, End: 0x7f0000200000, Perms: "rw-s", Dev: "00:0f", Inode: 99, Path: "/anon_hugepage (deleted)"}, true, true},
		{"7f0000000000-7f0000001000 r--s 00000000 08:01 7 /tmp/a file with spaces",
			VMA{Start: 0x7f0000000000, End: 0x7f0000001000, Perms: "r--s", Dev: "08:01", Inode: 7, Path: "/tmp/a file with spaces"}, true, false},
	} {
		v, ok := ParseMapsLine(tc.line)
		if !ok || v != tc.want || v.Shared() != tc.shared || v.HugeTLBPath() != tc.huge {
			t.Errorf("ParseMapsLine(%q) = %+v, %v", tc.line, v, ok)
		}
	}
	for _, bad := range []string{"", "garbage", "x-y rw-p 0 00:00 0", "1000-2000 rw 0 00:00 0"} {
		if _, ok := ParseMapsLine(bad); ok {
			t.Errorf("ParseMapsLine(%q) accepted", bad)
		}
	}
	if p := (VMA{Perms: "r-xp"}).Prot(); p != unix.PROT_READ|unix.PROT_EXEC {
		t.Errorf("Prot r-xp = %#x", p)
	}
}

// ReserveAt never replaces a mapping: on a used range it reports false and the mapping
// survives; on a free range it reserves exactly there.
func TestReserveAt(t *testing.T) {
	n := uintptr(2 * PageSize())
	p, err := Mmap(nil, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := Slice(p, int(n))
	b[0] = 9
	ok, err := ReserveAt(p, n)
	if err != nil || ok {
		t.Fatalf("ReserveAt over a mapping: %v %v, want false, nil", ok, err)
	}
	if b[0] != 9 {
		t.Fatal("ReserveAt replaced the mapping")
	}
	if err := Munmap(p, n); err != nil {
		t.Fatal(err)
	}
	ok, err = ReserveAt(p, n)
	if err != nil || !ok {
		t.Fatalf("ReserveAt on a free range: %v %v", ok, err)
	}
	vmas, err := FindVMAs(Addr(p), Addr(p)+n)
	if err != nil || len(vmas) != 1 || vmas[0].Start != Addr(p) || vmas[0].Perms != "---p" {
		t.Fatalf("after ReserveAt: %+v %v", vmas, err)
	}
	Munmap(p, n)
}

// PROCMAP_QUERY and the text of /proc/self/maps describe the same areas.
func TestQueryMatchesText(t *testing.T) {
	n := uintptr(3 * PageSize())
	p, err := Mmap(nil, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(p, n)
	if err := unix.Mprotect(Slice(Add(p, uintptr(PageSize())), PageSize()), unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.MemfdCreate("query", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.Ftruncate(fd, int64(n))
	q, err := Mmap(nil, n, unix.PROT_READ, unix.MAP_SHARED, fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(q, n)
	for _, r := range [][2]uintptr{{Addr(p), Addr(p) + n}, {Addr(q), Addr(q) + n}, {Addr(p) + 1, Addr(p) + n - 1}} {
		got, ok, err := queryVMAs(r[0], r[1])
		if !ok {
			t.Skipf("kernel without PROCMAP_QUERY (6.11+): %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		want, err := readVMAs(r[0], r[1])
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("[%#x, %#x): %d areas by query, %d by text", r[0], r[1], len(got), len(want))
		}
		for i := range got {
			g := got[i]
			g.PageSize = 0
			if g != want[i] {
				t.Errorf("area %d:\n query %+v\n text  %+v", i, got[i], want[i])
			}
		}
	}
}

func BenchmarkFindVMAs(b *testing.B) {
	p, err := Mmap(nil, uintptr(PageSize()), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer Munmap(p, uintptr(PageSize()))
	b.Run("query", func(b *testing.B) {
		for b.Loop() {
			if _, ok, err := queryVMAs(Addr(p), Addr(p)+1); !ok || err != nil {
				b.Skip(err)
			}
		}
	})
	b.Run("text", func(b *testing.B) {
		for b.Loop() {
			if _, err := readVMAs(Addr(p), Addr(p)+1); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A duplicate with MREMAP_FIXED that the kernel refuses leaves its destination as it was, on
// this kernel (6.17+ validates first) and on the path Mremap takes for older kernels; one that
// succeeds lands at the destination, shares the source's pages and leaves no other mapping.
func TestDuplicateFixedKeepsDestination(t *testing.T) {
	ps := uintptr(PageSize())
	saved := fixedValidatesFirst
	defer func() { fixedValidatesFirst = saved }()
	t.Logf("running kernel validates MREMAP_FIXED first: %v", saved)
	for _, validates := range []bool{true, false} {
		fixedValidatesFirst = validates
		before := readMaps(t)
		dst, err := Mmap(nil, 2*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1, 0)
		if err != nil {
			t.Fatal(err)
		}
		Slice(dst, int(2*ps))[ps] = 77
		// A source that is not mapped: the kernel refuses it (EFAULT).
		gone, err := Reserve(2 * ps)
		if err != nil {
			t.Fatal(err)
		}
		Munmap(gone, 2*ps)
		if _, err := Mremap(gone, 0, 2*ps, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst); !isErrno(err, unix.EFAULT) {
			t.Fatalf("duplicate of unmapped memory: %v, want EFAULT", err)
		}
		if v, err := FindVMAs(Addr(dst), Addr(dst)+2*ps); err != nil || len(v) != 1 || v[0].Start != Addr(dst) || !v[0].Shared() || Slice(dst, int(2*ps))[ps] != 77 {
			t.Fatalf("old-kernel path %v: destination after a refused duplicate: %+v %v", !validates, v, err)
		}
		src, err := Mmap(nil, 2*ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1, 0)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Mremap(src, 0, 2*ps, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, dst)
		if err != nil || p != dst {
			t.Fatalf("old-kernel path %v: duplicate onto the destination: %p %v", !validates, p, err)
		}
		Slice(src, int(2*ps))[5] = 9
		if Slice(dst, int(2*ps))[5] != 9 {
			t.Fatal("the duplicate does not share the source's pages")
		}
		for _, m := range []unsafe.Pointer{dst, src} {
			Munmap(m, 2*ps)
		}
		if after := readMaps(t); after != before {
			t.Fatalf("old-kernel path %v: mappings changed:\nbefore\n%s\nafter\n%s", !validates, before, after)
		}
	}
}

func readMaps(t *testing.T) string {
	t.Helper()
	v, err := readVMAs(0, ^uintptr(0))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, a := range v {
		if a.Shared() { // the Go runtime makes no shared mappings
			fmt.Fprintf(&b, "%x-%x %s %s\n", a.Start, a.End, a.Perms, a.Path)
		}
	}
	return b.String()
}
