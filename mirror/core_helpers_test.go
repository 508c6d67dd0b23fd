package mirror

import (
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"github.com/mirrormem/mirrormem/internal/mem/memtest"
)

// unchanged checks, when the returned function runs, that the test left no fd, mapping,
// goroutine of this module nor child process behind.
func unchanged(t testing.TB) func() {
	t.Helper()
	mem, procs := memtest.Unchanged(t), noneLeft(t)
	return func() {
		t.Helper()
		procs()
		mem()
	}
}

func mapsLine(t testing.TB, addr uintptr) string { t.Helper(); return memtest.MapsLine(t, addr) }

// seeEachOther writes a distinct pattern through every view in turn and checks that every
// other view reads it.
func seeEachOther(t *testing.T, views [][]byte) {
	t.Helper()
	n := len(views[0])
	for w, v := range views {
		for i := 0; i < n; i += 512 {
			v[i] = byte(w*31 + i/512 + 1)
		}
		for r, u := range views {
			for i := 0; i < n; i += 512 {
				if want := byte(w*31 + i/512 + 1); u[i] != want {
					t.Fatalf("write through view %d at %d: view %d reads %d, want %d", w, i, r, u[i], want)
				}
			}
		}
	}
}

// noneLeft fails t if, once the test is done, goroutines of this module or child processes
// remain that were not there when it started (see leakcheck.NoneLeft).
func noneLeft(t testing.TB) func() {
	t.Helper()
	return leakcheck.NoneLeft(t)
}

// shared is alloc.Shared, failing t on an error. The caller closes the region (mirrored's
// closer does).
func shared(t testing.TB, size int, opts ...alloc.Option) *alloc.Region {
	t.Helper()
	r, err := alloc.Shared(size, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// memfdRegion is alloc.Memfd, failing t on an error. The caller closes the region.
func memfdRegion(t testing.TB, name string, size int, opts ...alloc.Option) *alloc.Region {
	t.Helper()
	r, err := alloc.Memfd(name, size, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// mirrored mirrors r with opts, failing t (and closing r) if Mirror fails. The closer closes the
// pair and then the region; it does not check their errors: a test to which they matter calls
// Close itself first (a second Close returns nil).
func mirrored(t testing.TB, r *alloc.Region, opts ...Option) (*Pair, func()) {
	t.Helper()
	p, err := Mirror(r, opts...)
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	return p, func() {
		p.Close()
		r.Close()
	}
}

// ringPair is the ring layout: size bytes of shared memory with room for the mirror, mirrored
// Adjacent with opts. The closer is mirrored's.
func ringPair(t testing.TB, size int, opts ...Option) (*alloc.Region, *Pair, func()) {
	t.Helper()
	r := shared(t, size, alloc.WithRoom(size))
	p, closePair := mirrored(t, r, append([]Option{Adjacent()}, opts...)...)
	return r, p, closePair
}
