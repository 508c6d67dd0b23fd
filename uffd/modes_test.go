package uffd

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// The mode bits of the resolving ioctls, each against the kernel.

// COPY with WriteProtect maps the page write-protected: the next write is a WP fault.
func TestCopyWriteProtect(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeaturePagefaultFlagWP))
	mem := anonT(t, pg)
	mustNil(t, u.Register(addr(mem), pg, ModeMissing|ModeWP), "register")
	done := populate(mem, false)
	readOne(t, u)
	_, err := u.CopyAll(addr(mem), page(3), WriteProtect)
	mustNil(t, err, "copy wp")
	mustNil(t, waitT(t, done, "read"), "read")
	if !uffdWP(t, addr(mem)) {
		t.Fatal("pagemap: COPY with WP left the page writable")
	}
	done = populate(mem, true)
	m := readOne(t, u)
	if m.Flags()&(FlagWP|FlagWrite) != FlagWP|FlagWrite {
		t.Fatalf("%v, want a WP write fault", &m)
	}
	// Unprotecting with DontWake leaves the writer asleep until Wake.
	mustNil(t, u.WriteProtectRange(addr(mem), pg, false, DontWake), "unprotect")
	wakeAfterDontWake(t, u, addr(mem), "unprotect")
	mustNil(t, waitT(t, done, "write"), "write")
	// COPY with WP into a range registered without ModeWP: EINVAL.
	plain := anonT(t, pg)
	mustNil(t, u.Register(addr(plain), pg, ModeMissing), "register")
	if _, err := u.Copy(addr(plain), ptrOf(page(1)), pg, WriteProtect); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("COPY|WP without ModeWP: %v, want EINVAL", err)
	}
}

// POISON with DontWake leaves the waiter asleep until Wake.
func TestPoisonDontWake(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeaturePoison))
	mem := anonT(t, pg)
	done := resolveDontWake(t, u, mem, ModeMissing, "POISON", func(a uintptr) error {
		_, err := u.Poison(a, pg, DontWake)
		return err
	})
	if err := waitT(t, done, "populate"); err == nil {
		t.Fatal("populate of a poisoned page succeeded")
	}
}

// MOVE of a hole: ENOENT, unless AllowSrcHoles, which skips it. DontWake leaves the waiter.
func TestMoveModes(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(FeatureMove))
	dst := anonT(t, 2*pg)
	src := anonT(t, 2*pg)
	mustNil(t, u.Register(addr(dst), len(dst), ModeMissing), "register")
	if _, err := u.Move(addr(dst), addr(src), pg, 0); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("MOVE of a hole: %v, want ENOENT", err)
	}
	n, err := u.Move(addr(dst), addr(src), pg, AllowSrcHoles)
	if err != nil || n != pg {
		t.Fatalf("MOVE of a hole with ALLOW_SRC_HOLES: %d, %v", n, err)
	}
	src[pg] = 77
	done := populate(dst[pg:], false)
	readOne(t, u)
	n, err = u.Move(addr(dst)+uintptr(pg), addr(src)+uintptr(pg), pg, DontWake)
	if err != nil || n != pg {
		t.Fatalf("MOVE: %d, %v", n, err)
	}
	wakeAfterDontWake(t, u, addr(dst)+uintptr(pg), "MOVE")
	mustNil(t, waitT(t, done, "populate"), "populate")
	if dst[pg] != 77 {
		t.Fatalf("moved page reads %d", dst[pg])
	}
}

// CONTINUE with DontWake, then Wake.
func TestContinueDontWake(t *testing.T) {
	t.Parallel()
	u := newT(t, WithFeatures(shmemFeatures))
	reg, other := pair(t, pg)
	other[0] = 5
	done := resolveDontWake(t, u, reg, ModeMinor, "CONTINUE", func(a uintptr) error {
		_, err := u.Continue(a, pg, DontWake)
		return err
	})
	mustNil(t, waitT(t, done, "populate"), "populate")
	if reg[0] != 5 {
		t.Fatalf("reads %d", reg[0])
	}
}

// resolveDontWake registers the page mem in mode, lets a reader fault on it, resolves the fault
// with resolve (given the page's address; it passes DontWake), checks with wakeAfterDontWake
// that the reader still waits, wakes it, and returns the reader's result.
func resolveDontWake(t *testing.T, u *UFFD, mem []byte, mode Mode, what string, resolve func(a uintptr) error) <-chan error {
	t.Helper()
	mustNil(t, u.Register(addr(mem), pg, mode), "register")
	done := populate(mem, false)
	readOne(t, u)
	mustNil(t, resolve(addr(mem)), what)
	wakeAfterDontWake(t, u, addr(mem), what)
	return done
}

// wakeAfterDontWake checks that the one thread faulting on the page at a still waits after the
// ioctl what with DontWake, then wakes it.
func wakeAfterDontWake(t *testing.T, u *UFFD, a uintptr, what string) {
	t.Helper()
	if w := waiting(t, u); w != 1 {
		t.Fatalf("%d waiting after %s with DONTWAKE", w, what)
	}
	mustNil(t, u.Wake(a, pg), "wake")
}
