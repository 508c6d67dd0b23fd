package alloc

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/mirrormem/mirrormem/internal/gcstress"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

// collect runs mk, which returns memory of an object that is then unreachable, and forces
// collections until that object's cleanup has reported through leakWarning. It returns the
// memory and the warning.
func collect(t *testing.T, mk func() []byte) ([]byte, string) {
	t.Helper()
	got := make(chan string, 4)
	old := leakWarning
	leakWarning = func(msg string) { got <- msg }
	defer func() { leakWarning = old }()
	b := mk()
	stop := gcstress.Loop()
	defer stop()
	select {
	case msg := <-got:
		return b, msg
	case <-time.After(30 * time.Second):
		t.Fatal("the cleanup of an unreachable object never ran")
		return nil, ""
	}
}

func fdOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// The slice returned by Bytes does not keep its Region alive. The cleanup of an unreachable
// Region must therefore never unmap: it closes the descriptor (the mapping keeps the object
// alive), warns, and leaves the memory mapped for the slices that still point to it.
func TestCleanupNeverUnmaps(t *testing.T) {
	defer unchanged(t)()
	ps := PageSize()
	var fd int
	var target string
	b, msg := collect(t, func() []byte {
		r, err := Memfd("dropped", 2*ps, WithRoom(ps))
		if err != nil {
			t.Fatal(err)
		}
		fd = r.Fd()
		target, _ = os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		return r.Bytes()
	})
	base := mem.Ptr(b)
	defer mem.Munmap(base, uintptr(3*ps)) // the region and its room, leaked by design
	if l := mapsLine(t, uintptr(base)); l == "" {
		t.Fatal("the cleanup of an unreachable Region unmapped memory a slice still points to")
	}
	b[0], b[2*ps-1] = 7, 8
	if b[0] != 7 || b[2*ps-1] != 8 {
		t.Fatal("the leaked mapping does not hold what was written")
	}
	if now, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); now == target && fdOpen(fd) {
		t.Fatalf("the cleanup left the memfd open (fd %d -> %s)", fd, target)
	}
	if !strings.Contains(msg, "Close") || !strings.Contains(msg, "leak") || strings.Contains(msg, "\n") {
		t.Fatalf("warning %q: want one line saying the mapping leaks because Close was not called", msg)
	}
	t.Logf("warning: %s", msg)
}

// Nor may a Lease's cleanup unmap or replace what its holder mapped over the room.
func TestLeaseCleanupNeverUnmaps(t *testing.T) {
	defer unchanged(t)()
	ps := PageSize()
	r, err := Shared(ps, WithRoom(ps))
	if err != nil {
		t.Fatal(err)
	}
	view, msg := collect(t, func() []byte {
		l, err := r.Lend(ps)
		if err != nil {
			t.Fatal(err)
		}
		p, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&l.Bytes()[0]), uintptr(ps), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED)
		if err != nil {
			t.Fatal(err)
		}
		return unsafe.Slice((*byte)(p), ps)
	})
	view[0] = 3
	if l := mapsLine(t, uintptr(unsafe.Pointer(&view[0]))); !strings.Contains(l, "rw-s") || view[0] != 3 {
		t.Fatalf("the cleanup of an unreachable Lease replaced the holder's mapping: %q", l)
	}
	if !strings.Contains(msg, "Release") || strings.Contains(msg, "\n") {
		t.Fatalf("warning %q: want one line saying Release was not called", msg)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	mem.Munmap(unsafe.Pointer(&view[0]), uintptr(ps)) // the lent range, leaked by design
}

// Nil and zero-value receivers and arguments get an error that says what was wrong, never a
// panic, and change nothing.
func TestNilAndOddInput(t *testing.T) {
	defer unchanged(t)()
	ps := PageSize()
	r, err := Shared(ps, WithRoom(ps))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var nilRegion *Region
	var nilLease *Lease
	for _, tc := range []struct {
		name    string
		call    func() error
		want    error
		mention string
	}{
		{"CloseWith(nil)", func() error { return r.CloseWith(nil) }, ErrInvalid, "nil *Lease"},
		{"CloseWith(zero Lease)", func() error { return r.CloseWith(&Lease{}) }, ErrInvalid, "Lend"},
		{"nil Region Close", func() error { return nilRegion.Close() }, ErrInvalid, "nil *Region"},
		{"zero Region Close", func() error { return (&Region{}).Close() }, ErrInvalid, "alloc.Shared"},
		{"nil Region CloseWith", func() error { return nilRegion.CloseWith(nil) }, ErrInvalid, "nil *Region"},
		{"nil Region Lend", func() error { _, err := nilRegion.Lend(ps); return err }, ErrInvalid, "nil *Region"},
		{"nil Lease Release", func() error { return nilLease.Release() }, ErrInvalid, "nil *Lease"},
		{"zero Lease Release", func() error { return (&Lease{}).Release() }, ErrInvalid, "Lend"},
		{"nil Option", func() error { _, err := Shared(ps, nil); return err }, ErrInvalid, "option 1 is nil"},
		{"Memfd name with NUL", func() error { _, err := Memfd("a\x00b", ps); return err }, ErrInvalid, "NUL"},
		{"Memfd name too long", func() error { _, err := Memfd(strings.Repeat("n", 250), ps); return err }, ErrInvalid, "249"},
		{"FromFD negative size", func() error { _, err := FromFD(0, -1); return err }, ErrSize, "-1"},
		{"Lend zero", func() error { _, err := r.Lend(0); return err }, ErrSize, "positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("panic: %v", p)
					}
				}()
				err = tc.call()
			}()
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("%v\nwant %v mentioning %q", err, tc.want, tc.mention)
			}
		})
	}
	// Accessors of a nil Region report "nothing" instead of panicking.
	if nilRegion.Bytes() != nil || nilRegion.Addr() != 0 || nilRegion.Len() != 0 || nilRegion.Fd() != -1 || nilRegion.Room() != 0 {
		t.Fatal("accessors of a nil *Region should return nil, 0 and -1")
	}
	if nilLease.Bytes() != nil {
		t.Fatal("Bytes of a nil *Lease should be nil")
	}
	// The region is untouched by the refused calls above.
	if r.Bytes() == nil || mapsLine(t, r.Addr()+uintptr(ps)) == "" {
		t.Fatal("a refused call closed the region or its room")
	}
}

// If the room's reservation cannot be restored when a Lease is released, the range stays the
// region's, and the region's Close unmaps it: it is never leaked.
func TestLeaseReleaseFailureDoesNotLeak(t *testing.T) {
	defer unchanged(t)()
	ps := PageSize()
	r, err := Shared(ps, WithRoom(2*ps))
	if err != nil {
		t.Fatal(err)
	}
	l, err := r.Lend(2 * ps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&l.Bytes()[0]), uintptr(ps), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED); err != nil {
		t.Fatal(err)
	}
	injected := errors.New("injected failure")
	old := reserveOver
	reserveOver = func(mem.Pointer, uintptr) error { return injected }
	err = l.Release()
	reserveOver = old
	if !errors.Is(err, injected) {
		t.Fatalf("Release: %v, want the ReserveOver error", err)
	}
	if err := l.Release(); !errors.Is(err, injected) {
		t.Fatalf("second Release: %v, want the same error again", err)
	}
	end := r.Addr() + uintptr(r.Len())
	// The next Lend restores the reservation before lending the range again.
	l2, err := r.Lend(ps)
	if err != nil {
		t.Fatal(err)
	}
	if line := mapsLine(t, end); !strings.Contains(line, "---p") {
		t.Fatalf("Lend after a failed release hands out %q, want a fresh PROT_NONE reservation", line)
	}
	if err := l2.Release(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for _, a := range []uintptr{end, end + uintptr(ps)} {
		if l := mapsLine(t, a); l != "" && ours(l) {
			t.Fatalf("%#x (lent range whose release failed) still mapped after the region's Close: %q", a, l)
		}
	}
}
