package mirror

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
)

// A source that is the memory being served would fill a page from itself: the handler would
// fault on its own range forever (or read the object's holes as zeros). Refused.
func TestServeFaultsRefusesSelfSource(t *testing.T) {
	n := 16 * alloc.PageSize()
	r := shared(t, n)
	defer r.Close()
	mf := memfdRegion(t, "self", n)
	defer mf.Close()
	fd, err := unix.FcntlInt(uintptr(mf.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	self := os.NewFile(uintptr(fd), "memfd")
	defer self.Close()
	defer unchanged(t)()
	for name, mk := range map[string]func() (*Pair, error){
		"Of region, RegionSource of it": func() (*Pair, error) { return Of(r.Bytes(), ServeFaults(RegionSource(r))) },
		"Of sub-range, RegionSource":    func() (*Pair, error) { return Of(r.Bytes()[:n/2], ServeFaults(RegionSource(r))) },
		"Mirror region, RegionSource":   func() (*Pair, error) { return Mirror(r, ServeFaults(RegionSource(r))) },
		"Mirror memfd, its own file":    func() (*Pair, error) { return Mirror(mf, ServeFaults(self)) },
		"Of memfd, its own file":        func() (*Pair, error) { return Of(mf.Bytes(), ServeFaults(self)) },
	} {
		p, err := mk()
		if err == nil {
			p.Close()
			t.Errorf("%s: accepted", name)
			continue
		}
		if !errors.Is(err, ErrRange) {
			t.Errorf("%s: %v, want ErrRange", name, err)
		}
	}
}

// Pages that already hold data would never be asked of the source (every view maps them
// silently): ServeFaults refuses them rather than bypass the source behind a passing Verify.
func TestServeFaultsRefusesResidentPages(t *testing.T) {
	n := 16 * alloc.PageSize()
	f, _ := patternFile(t, n)
	defer unchanged(t)()
	pop := shared(t, n, alloc.Populate())
	defer pop.Close()
	if _, err := Mirror(pop, ServeFaults(f)); !errors.Is(err, ErrResident) {
		t.Errorf("populated region: %v, want ErrResident", err)
	}
	w := shared(t, n)
	defer w.Close()
	w.Bytes()[5*alloc.PageSize()] = 1
	_, err := Mirror(w, ServeFaults(f))
	if !errors.Is(err, ErrResident) {
		t.Fatalf("a written page: %v, want ErrResident", err)
	}
	// After freeing the page, the source serves it.
	if err := unix.Madvise(w.Bytes(), unix.MADV_REMOVE); err != nil {
		t.Fatal(err)
	}
	p, err := Mirror(w, ServeFaults(f))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Verify(); err != nil {
		t.Error(err)
	}
}

// When Adjacent has to lay out every view anew, the caller's own mapping still shows the same
// memory: it is served from the source too, never left to fill with zeros.
func TestServeFaultsAdjacentMovedServesCallerMapping(t *testing.T) {
	n := 16 * alloc.PageSize()
	f, data := patternFile(t, n)
	defer unchanged(t)()
	big, err := unix.Mmap(-1, 0, 2*n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(big)
	b := big[:n] // the space after b is taken (by the rest of big): Adjacent must move
	p, err := Of(b, Adjacent(), ServeFaults(f), VerifyFaults(100))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if &p.Original()[0] == &b[0] {
		t.Skip("the layout did not have to move")
	}
	got := make([]byte, n)
	copy(got, b) // served outside Go: copy() is fine
	if !bytes.Equal(got, data) {
		t.Fatal("the caller's own mapping of the memory was not served from the source")
	}
	if o, _ := p.FaultStats(); o.Missing == 0 {
		t.Errorf("faults through the caller's mapping not counted in the original's stats: %+v", o)
	}
	if err := p.Verify(); err != nil {
		t.Error(err)
	}
}

// Verify compares the filled pages with the source (a page written since is reported);
// VerifyHandler checks only the handler's records and the views' agreement.
func TestVerifyComparesWithSource(t *testing.T) {
	n := 16 * alloc.PageSize()
	f, data := patternFile(t, n)
	defer unchanged(t)()
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(f), FaultAround(0))
	defer closePair()
	ps := alloc.PageSize()
	if p.Mirror()[3*ps] != data[3*ps] {
		t.Fatal("not served from the source")
	}
	if err := p.Verify(); err != nil {
		t.Fatalf("after a read: %v", err)
	}
	p.Original()[3*ps+7] ^= 0xff
	if err := p.Verify(); err == nil {
		t.Error("Verify passed with a filled page that differs from its source")
	}
	if err := p.VerifyHandler(); err != nil {
		t.Errorf("VerifyHandler: %v", err)
	}
}
