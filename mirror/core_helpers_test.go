package mirror

import (
	"testing"

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
