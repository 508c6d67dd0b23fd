package mem

import (
	"testing"

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
