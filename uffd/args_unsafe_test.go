package uffd

import (
	"errors"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestResolveArgumentChecks: every resolving call refuses an empty or unaligned range with a
// *RangeError that names the call, before any system call.
func TestResolveArgumentChecks(t *testing.T) {
	u := newT(t)
	mem := anonT(t, 2*pg)
	a := addr(mem)
	src := unsafe.Pointer(&mem[0])
	calls := map[string]func(addr uintptr, n int) error{
		"UFFDIO_COPY":     func(d uintptr, n int) error { _, err := u.Copy(d, src, n, 0); return err },
		"UFFDIO_ZEROPAGE": func(d uintptr, n int) error { _, err := u.ZeroPage(d, n, 0); return err },
		"UFFDIO_CONTINUE": func(d uintptr, n int) error { _, err := u.Continue(d, n, 0); return err },
		"UFFDIO_POISON":   func(d uintptr, n int) error { _, err := u.Poison(d, n, 0); return err },
		"UFFDIO_MOVE":     func(d uintptr, n int) error { _, err := u.Move(d, a+uintptr(pg), n, 0); return err },
		"UFFDIO_WAKE":     func(d uintptr, n int) error { return u.Wake(d, n) },
		"UFFDIO_WRITEPROTECT": func(d uintptr, n int) error {
			return u.WriteProtectRange(d, n, true, 0)
		},
	}
	for name, call := range calls {
		for _, c := range []struct {
			addr uintptr
			n    int
		}{{a, 0}, {a, -pg}, {a + 1, pg}, {a, pg + 1}, {^uintptr(0) &^ uintptr(pg-1), 2 * pg}} {
			err := call(c.addr, c.n)
			var re *RangeError
			if !errors.As(err, &re) || re.Op != name {
				t.Errorf("%s [%#x, +%d): %v, want a *RangeError of %s", name, c.addr, c.n, err, name)
			}
		}
	}
	if _, err := u.Copy(a, nil, pg, 0); err == nil {
		t.Error("Copy from a nil source succeeded")
	}
	if _, err := u.Move(a, a+1, pg, 0); err == nil {
		t.Error("Move from an unaligned source passed the checks")
	}
}

// TestResolveErrorsNoAlloc: the errors of the fault path (ENOENT here: the range is not
// registered) cost no allocation, and still name the call and match the errno.
func TestResolveErrorsNoAlloc(t *testing.T) {
	u := newT(t)
	mem := anonT(t, pg)
	src := page(1)
	_, err := u.Copy(addr(mem), ptrOf(src), pg, 0)
	if !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Copy into an unregistered range: %v, want ENOENT", err)
	}
	if allocs := testing.AllocsPerRun(100, func() { u.Copy(addr(mem), ptrOf(src), pg, 0) }); allocs != 0 {
		t.Errorf("Copy failing with ENOENT: %v allocations", allocs)
	}
	if allocs := testing.AllocsPerRun(100, func() { u.ZeroPage(addr(mem), pg, 0) }); allocs != 0 {
		t.Errorf("ZeroPage failing: %v allocations", allocs)
	}
	for o := op(0); o < nOps; o++ {
		for _, e := range hotErrnos {
			var err error
			if n := testing.AllocsPerRun(10, func() { err = opError(o, e) }); n != 0 {
				t.Errorf("%s %v: %v allocations", opNames[o], e, n)
			}
			if !errors.Is(err, e) {
				t.Errorf("%s: %v does not match %v", opNames[o], err, e)
			}
		}
	}
}
