package mirror

import (
	"bytes"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/gcstress"
)

// collectLeaked makes the Pair built by mk unreachable, forces collections until its cleanup
// has run (the cleanup reports through leakWarning), and returns the leaked state so that the
// test can check the slices and release it.
func collectLeaked(t *testing.T, mk func() []byte) (*state, []byte) {
	t.Helper()
	got := make(chan *state, 1)
	old := leakWarning
	leakWarning = func(s *state) { got <- s }
	defer func() { leakWarning = old }()
	b := mk()
	stop := gcstress.Loop()
	defer stop()
	select {
	case s := <-got:
		return s, b
	case <-time.After(30 * time.Second):
		t.Fatal("the cleanup of an unreachable Pair never ran")
		return nil, nil
	}
}

// The slices of a Pair do not keep it alive: its cleanup must not unmap them (the idiom
// `ring := p.Contiguous()` with p unused would crash or corrupt memory at the next GC). It
// warns and leaves the mapping alone.
func TestCleanupNeverUnmaps(t *testing.T) {
	defer unchanged(t)()
	ps := alloc.PageSize()
	r := shared(t, ps)
	defer r.Close()
	s, ring := collectLeaked(t, func() []byte {
		p, err := Mirror(r, Adjacent())
		if err != nil {
			t.Fatal(err)
		}
		return p.Contiguous()
	})
	defer s.teardown()
	if l := mapsLine(t, addr(ring[ps:])); l == "" {
		t.Fatal("the cleanup of an unreachable Pair unmapped its mirror view while a slice still uses it")
	}
	ring[0] = 42
	if ring[ps] != 42 {
		t.Fatalf("ring[%d] = %d after writing 42 to ring[0]: the views are no longer mirrors", ps, ring[ps])
	}
}

// With ServeFaults, the cleanup must not stop serving either: closing the userfaultfd would
// turn every later first touch into a silent zero page.
func TestCleanupKeepsServing(t *testing.T) {
	n := 16 * alloc.PageSize()
	f, data := patternFile(t, n)
	defer unchanged(t)()
	r := shared(t, n)
	defer r.Close()
	s, view := collectLeaked(t, func() []byte {
		p, err := Mirror(r, ServeFaults(f))
		if err != nil {
			t.Fatal(err)
		}
		return p.Mirror()
	})
	defer s.teardown()
	got := make([]byte, n)
	copy(got, view) // served by a handler outside Go: copy() is allowed
	if !bytes.Equal(got, data) {
		t.Fatal("an unreachable Pair's view no longer shows its source's bytes: its cleanup stopped fault serving")
	}
}
