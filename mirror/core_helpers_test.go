package mirror

import (
	"testing"

	"github.com/mirrormem/mirrormem/internal/mem/memtest"
)

func unchanged(t testing.TB) func() { t.Helper(); return memtest.Unchanged(t) }

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
