package leakcheck

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDiffSeesSharedMappingAndFD(t *testing.T) {
	before, err := Take()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, 3*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.MemfdCreate("leakcheck-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	after, err := Take()
	if err != nil {
		t.Fatal(err)
	}
	d := Diff(before, after, false)
	if !strings.Contains(d, "memfd:leakcheck-test") || !strings.Contains(d, "rw-s") {
		t.Fatalf("Diff missed the new fd or the shared mapping:\n%s", d)
	}
	unix.Munmap(mem)
	unix.Close(fd)
	final, err := Take()
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(before, final, false); d != "" {
		t.Fatalf("after cleanup Diff still reports:\n%s", d)
	}
}

func TestRelevantReservations(t *testing.T) {
	maps := []string{
		"7f0000000000-7f0000001000 rw-s 00000000 00:01 12 /dev/zero (deleted)",
		"7f0000001000-7f0000002000 ---p 00000000 00:00 0",
		"7f0000010000-7f0000011000 ---p 00000000 00:00 0",
		"7f0000011000-7f0000020000 rw-p 00000000 00:00 0",
		"7f0000030000-7f0000040000 ---p 00000000 00:00 0",
		"7f0000050000-7f0000060000 r-xp 00000000 08:01 99 /usr/lib/libc.so.6",
	}
	want := []bool{true, true, false, false, true, false}
	for i, w := range want {
		if got := Relevant(maps, i); got != w {
			t.Errorf("Relevant(%q) = %v, want %v", maps[i], got, w)
		}
	}
}

type recorder struct{ errs []string }

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.Errorf(format, args...) }
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, format)
}

func TestCheckSharedReportsLeakedSharedMapping(t *testing.T) {
	var r recorder
	done := CheckShared(&r)
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	done()
	if len(r.errs) == 0 {
		t.Fatal("CheckShared missed a shared mapping left behind")
	}
	unix.Munmap(mem)
	r.errs = nil
	done = CheckShared(&r)
	done()
	if len(r.errs) != 0 {
		t.Fatalf("CheckShared reported a leak where there is none: %v", r.errs)
	}
}
