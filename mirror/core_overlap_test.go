package mirror

import (
	"errors"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
)

// MREMAP_FIXED onto the source destroys the source : mapView refuses any
// destination that overlaps the source, and the source survives.
func TestNeverMapOverSource(t *testing.T) {
	defer unchanged(t)()
	ps := alloc.PageSize()
	r := shared(t, 4*ps)
	defer r.Close()
	b := r.Bytes()
	b[0], b[3*ps] = 1, 2
	src := &source{op: "test", ptr: mem.Ptr(b[ps:]), n: 2 * ps, fd: -1}
	for _, dst := range []int{0, ps, 2 * ps} { // below, onto, above (inside) the source
		for _, backend := range []Backend{BackendDuplicate, BackendMemfd} {
			if _, err := mapView(src, mem.Ptr(b[dst:]), backend); !errors.Is(err, ErrRange) {
				t.Fatalf("mapView at +%d over the source at +%d (%v): %v, want ErrRange", dst, ps, backend, err)
			}
		}
	}
	if b[0] != 1 || b[3*ps] != 2 || mapsLine(t, r.Addr()) == "" {
		t.Fatal("source damaged")
	}
}
