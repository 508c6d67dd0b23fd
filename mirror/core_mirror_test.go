package mirror

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
)

func addr(b []byte) uintptr { return mem.Addr(mem.Ptr(b)) }

func TestViewsShareWrites(t *testing.T) {
	ps := alloc.PageSize()
	const pages = 4
	type kind struct {
		name string
		mk   func(room int) (*alloc.Region, error)
	}
	kinds := []kind{
		{"Shared", func(room int) (*alloc.Region, error) { return alloc.Shared(pages*ps, alloc.WithRoom(room)) }},
		{"Memfd", func(room int) (*alloc.Region, error) { return alloc.Memfd("views", pages*ps, alloc.WithRoom(room)) }},
	}
	for _, k := range kinds {
		for _, backend := range []Backend{BackendDuplicate, BackendMemfd} {
			if k.name == "Shared" && backend == BackendMemfd {
				continue // no descriptor: refused, see TestRefusals
			}
			for _, views := range []int{2, 3, 5} {
				for _, layout := range []string{"apart", "adjacent-room", "adjacent-noroom"} {
					name := fmt.Sprintf("%s/%v/%d/%s", k.name, backend, views, layout)
					t.Run(name, func(t *testing.T) {
						defer unchanged(t)()
						room := 0
						if layout == "adjacent-room" {
							room = (views - 1) * pages * ps
						}
						r, err := k.mk(room)
						if err != nil {
							t.Fatal(err)
						}
						defer r.Close()
						opts := []Option{WithBackend(backend), Views(views)}
						if layout != "apart" {
							opts = append(opts, Adjacent())
						}
						p, err := Mirror(r, opts...)
						if err != nil {
							t.Fatal(err)
						}
						if p.Backend() != backend || p.NumViews() != views || p.Len() != r.Len() {
							t.Fatalf("Backend %v NumViews %d Len %d", p.Backend(), p.NumViews(), p.Len())
						}
						all := make([][]byte, views)
						for i := range all {
							all[i] = p.View(i)
							if len(all[i]) != r.Len() {
								t.Fatalf("view %d has %d bytes", i, len(all[i]))
							}
						}
						all = append(all, r.Bytes())
						seeEachOther(t, all)
						c := p.Contiguous()
						if layout == "apart" {
							if c != nil {
								t.Fatal("Contiguous without Adjacent should be nil")
							}
						} else {
							if len(c) != views*r.Len() || addr(c) != addr(p.Original()) {
								t.Fatalf("Contiguous: %d bytes at %#x, want %d at %#x", len(c), addr(c), views*r.Len(), addr(p.Original()))
							}
							for i := 1; i < views; i++ {
								if addr(p.View(i)) != addr(p.View(i-1))+uintptr(r.Len()) {
									t.Fatalf("view %d at %#x does not start where view %d ends", i, addr(p.View(i)), i-1)
								}
							}
						}
						if layout == "adjacent-room" && addr(p.Original()) != r.Addr() {
							t.Fatal("with room, Original() should be the region's own memory")
						}
						if layout != "adjacent-room" && layout != "apart" && addr(p.Original()) != r.Addr() {
							// A fresh layout: view 0 is a new view, the region's memory is another.
							if l := mapsLine(t, addr(p.Original())); l == "" {
								t.Fatal("Original() not mapped")
							}
						}
						if err := p.Close(); err != nil {
							t.Fatal(err)
						}
						if err := p.Close(); err != nil {
							t.Fatalf("second Close: %v", err)
						}
						if p.Original() != nil || p.Mirror() != nil || p.Contiguous() != nil {
							t.Fatal("views after Close should be nil")
						}
						if layout == "adjacent-room" {
							if l := mapsLine(t, r.Addr()+uintptr(r.Len())); len(l) < 30 || !strings.Contains(l, "---p") {
								t.Fatalf("room after Close: %q, want PROT_NONE again", l)
							}
						}
					})
				}
			}
		}
	}
}

// The ring layout: a write across the end of the original reappears at its start.
func TestRingWraps(t *testing.T) {
	defer unchanged(t)()
	n := 4 * alloc.PageSize()
	r, p, closePair := ringPair(t, n)
	defer closePair()
	ring := p.Contiguous()
	msg := []byte("wrapped around the end")
	head := n - 7
	copy(ring[head:], msg) // one copy, no wrap-around code
	orig := r.Bytes()
	if got := string(orig[head:]) + string(orig[:len(msg)-7]); got != string(msg) {
		t.Fatalf("read back through the original: %q, want %q", got, msg)
	}
	if got := string(ring[head : head+len(msg)]); got != string(msg) {
		t.Fatalf("read back through the ring: %q", got)
	}
}

// Of mirrors a sub-range of a mapping: the mirror shows the object at the matching offset.
func TestOfSubRange(t *testing.T) {
	ps := alloc.PageSize()
	for _, backend := range []Backend{BackendDuplicate, BackendMemfd} {
		for _, mk := range []func() (*alloc.Region, error){
			func() (*alloc.Region, error) { return alloc.Shared(8 * ps) },
			func() (*alloc.Region, error) { return alloc.Memfd("sub", 8*ps) },
		} {
			func() {
				defer unchanged(t)()
				r, err := mk()
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				b := r.Bytes()
				for i := range b {
					b[i] = byte(i / ps)
				}
				p, err := Of(b[2*ps:5*ps], WithBackend(backend), Adjacent())
				if err != nil {
					t.Fatalf("%v %v: %v", r.Kind(), backend, err)
				}
				defer p.Close()
				m := p.Mirror()
				if len(m) != 3*ps || m[0] != 2 || m[ps] != 3 || m[3*ps-1] != 4 {
					t.Fatalf("%v %v: mirror shows pages %d %d %d, want 2 3 4", r.Kind(), backend, m[0], m[ps], m[3*ps-1])
				}
				m[ps+1] = 99
				if b[3*ps+1] != 99 {
					t.Fatalf("write through the sub-range mirror not seen in the region")
				}
				seeEachOther(t, [][]byte{p.Original(), p.Mirror(), b[2*ps : 5*ps]})
			}()
		}
	}
}

func TestOfWholeRegion(t *testing.T) {
	defer unchanged(t)()
	r := shared(t, 2*alloc.PageSize())
	defer r.Close()
	p, err := Of(r.Bytes(), Views(3))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if addr(p.Original()) != r.Addr() || p.Backend() != BackendDuplicate {
		t.Fatalf("Original at %#x (region %#x), backend %v", addr(p.Original()), r.Addr(), p.Backend())
	}
	seeEachOther(t, [][]byte{p.View(0), p.View(1), p.View(2)})
}

// Two adjacent pairs of one region: the second cannot have the room and gets its own layout.
func TestTwoAdjacentPairs(t *testing.T) {
	defer unchanged(t)()
	n := alloc.PageSize()
	r := memfdRegion(t, "two", n, alloc.WithRoom(n))
	defer r.Close()
	p1, err := Mirror(r, Adjacent())
	if err != nil {
		t.Fatal(err)
	}
	p2, err := Mirror(r, Adjacent())
	if err != nil {
		t.Fatal(err)
	}
	if addr(p1.Original()) != r.Addr() || addr(p2.Original()) == r.Addr() {
		t.Fatalf("p1 at %#x, p2 at %#x, region %#x: want p1 in the room and p2 elsewhere", addr(p1.Original()), addr(p2.Original()), r.Addr())
	}
	seeEachOther(t, [][]byte{p1.Original(), p1.Mirror(), p2.Original(), p2.Mirror()})
	if err := errors.Join(p1.Close(), p2.Close()); err != nil {
		t.Fatal(err)
	}
}

// A Pair may outlive its Region's Close: the mirror views keep the pages; the lent room is
// unmapped by the Pair.
func TestRegionClosedFirst(t *testing.T) {
	defer unchanged(t)()
	n := alloc.PageSize()
	r := shared(t, n, alloc.WithRoom(n))
	p, err := Mirror(r, Adjacent())
	if err != nil {
		t.Fatal(err)
	}
	p.Mirror()[10] = 5
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if p.Mirror()[10] != 5 {
		t.Fatal("mirror lost its pages when the region closed")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentClose(t *testing.T) {
	defer unchanged(t)()
	r := shared(t, alloc.PageSize(), alloc.WithRoom(alloc.PageSize()))
	defer r.Close()
	p, err := Mirror(r, Adjacent())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Close()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// 10,000 create/close cycles of an adjacent ring leave nothing behind.
func TestManyCycles(t *testing.T) {
	defer unchanged(t)()
	n := 16 * alloc.PageSize()
	for i := 0; i < 10000; i++ {
		r := shared(t, n, alloc.WithRoom(n))
		p, err := Mirror(r, Adjacent())
		if err != nil {
			t.Fatal(err)
		}
		p.Contiguous()[n] = byte(i)
		if r.Bytes()[0] != byte(i) {
			t.Fatal("mirror does not share with the region")
		}
		if err := errors.Join(p.Close(), r.Close()); err != nil {
			t.Fatal(err)
		}
	}
	for _, backend := range []Backend{BackendDuplicate, BackendMemfd} {
		for i := 0; i < 1000; i++ {
			r := memfdRegion(t, "cycle", n)
			p, err := Mirror(r, WithBackend(backend), Views(3))
			if err != nil {
				t.Fatal(err)
			}
			if err := errors.Join(p.Close(), r.Close()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// With CloseRegion the Pair's Close closes the region as well, in one munmap with the room.
func TestCloseRegion(t *testing.T) {
	defer unchanged(t)()
	n := alloc.PageSize()
	for _, room := range []int{n, 0} {
		r := memfdRegion(t, "owned", n, alloc.WithRoom(room))
		p, err := Mirror(r, Adjacent(), CloseRegion())
		if err != nil {
			t.Fatal(err)
		}
		p.Contiguous()[n+1] = 3
		if r.Bytes()[1] != 3 {
			t.Fatal("views do not share")
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if r.Bytes() != nil || r.Fd() != -1 {
			t.Fatalf("room %d: the region is still open after the owning Pair's Close", room)
		}
		if err := r.Close(); err != nil {
			t.Fatalf("Close of the region after its Pair closed it: %v", err)
		}
	}
	// A failed Mirror leaves the region to the caller.
	r := shared(t, n)
	if _, err := Mirror(r, CloseRegion(), WithBackend(BackendMemfd)); err == nil {
		t.Fatal("BackendMemfd on Shared memory should fail")
	}
	if r.Bytes() == nil {
		t.Fatal("a failed Mirror closed the caller's region")
	}
	r.Close()
}
