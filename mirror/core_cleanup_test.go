package mirror

import (
	"runtime"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
)

// A Pair that becomes unreachable without Close is unmapped by its cleanup (a safety net, not
// the way to release it), and its region with it when the Pair owned the region.
func TestCleanupUnmapsPair(t *testing.T) {
	var view, region uintptr
	func() {
		r, err := alloc.Shared(alloc.PageSize())
		if err != nil {
			t.Fatal(err)
		}
		p, err := Mirror(r, CloseRegion())
		if err != nil {
			t.Fatal(err)
		}
		view, region = addr(p.Mirror()), r.Addr()
	}()
	for i := 0; i < 1000 && (mapsLine(t, view) != "" || mapsLine(t, region) != ""); i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if l := mapsLine(t, view); l != "" {
		t.Fatalf("mirror view of an unreachable Pair still mapped: %q", l)
	}
	if l := mapsLine(t, region); l != "" {
		t.Fatalf("region owned by an unreachable Pair still mapped: %q", l)
	}
}
