package mirror

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/mirrormem/mirrormem/alloc"
)

// A port of the kernel selftest uffd-stress "bounce" test to the two views of a mirror.
//
// Every page holds a lock word, a counter and a copy of the counter at its end. Several
// workers per core lock random pages through one view, check the counter against its copy
// through the other view, increment both and unlock. Each bounce moves the whole memory into a
// fresh mirrored region that is served lazily from the previous one (ServeFaults with a
// RegionSource), so every page crosses userfaultfd while workers race on it through both
// views; the bounces alternate fault-around on and off, random and sequential page choice, and
// all workers starting on the same page (racing faults). After each bounce every counter must
// equal the increments made, through both views, and the handler's invariants must hold.
// Bounded to about 15 seconds (3 with -short).
func TestBounceAcrossViews(t *testing.T) {
	t.Parallel()
	const pages = 1024
	page := alloc.PageSize()
	size := pages * page
	budget := 15 * time.Second
	if testing.Short() {
		budget = 3 * time.Second
	}
	workers := 3 * runtime.GOMAXPROCS(0)
	expected := make([]atomic.Uint64, pages)
	deadline := time.Now().Add(budget)

	var prev *alloc.Region
	var prevPair *Pair
	bounces := 0
	for bounce := 0; bounce < 1000 && (bounce < 4 || time.Now().Before(deadline)); bounce++ {
		r := shared(t, size)
		opts := []Option{ServeFaults(nil), VerifyFaults(0)}
		if prev != nil {
			opts[0] = ServeFaults(RegionSource(prev))
		}
		if bounce%2 == 1 {
			opts = append(opts, FaultAround(0))
		}
		p, err := Mirror(r, opts...)
		if err != nil {
			t.Fatal(err)
		}
		views := [2][]byte{p.Original(), p.Mirror()}
		mode := bounce % 3 // 0 random, 1 sequential, 2 racing (everyone starts at page 0)
		ops := 400 * pages / workers
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(bounce), uint64(w)))
				pg := 0
				if mode == 1 {
					pg = w * pages / workers
				}
				for i := 0; i < ops; i++ {
					switch mode {
					case 0:
						pg = rng.IntN(pages)
					default:
						pg = (pg + 1) % pages
					}
					v := rng.IntN(2)
					bump(t, views[v][pg*page:(pg+1)*page], views[1-v][pg*page:(pg+1)*page], pg)
					expected[pg].Add(1)
				}
			}(w)
		}
		wg.Wait()
		// Verify every page through both views (this also fills the pages never touched, so the
		// previous region can go).
		for pg := 0; pg < pages; pg++ {
			for v := 0; v < 2; v++ {
				b := views[v][pg*page : (pg+1)*page]
				c, cp := counter(b), copyOf(b)
				if c != expected[pg].Load() || cp != c || lockWord(b) != 0 {
					t.Fatalf("bounce %d page %d view %d: count %d, copy %d, lock %d; want %d",
						bounce, pg, v, c, cp, lockWord(b), expected[pg].Load())
				}
			}
		}
		if err := p.VerifyHandler(); err != nil { // written pages differ from the source: not Verify
			t.Fatalf("bounce %d: %v", bounce, err)
		}
		if o, m := p.FaultStats(); o.Missing == 0 || m.Missing == 0 {
			t.Fatalf("bounce %d: both views must serve missing faults: %+v %+v", bounce, o, m)
		}
		if prevPair != nil {
			prevPair.Close()
			prev.Close()
		}
		prev, prevPair = r, p
		bounces++
	}
	prevPair.Close()
	prev.Close()
	t.Logf("%d bounces of %d pages, %d workers", bounces, pages, workers)
}

func word32(b []byte) *uint32 { return (*uint32)(unsafe.Pointer(&b[0])) }
func word64(b []byte) *uint64 { return (*uint64)(unsafe.Pointer(&b[0])) }

func lockWord(b []byte) uint32 { return atomic.LoadUint32(word32(b)) }
func counter(b []byte) uint64  { return atomic.LoadUint64(word64(b[8:])) }
func copyOf(b []byte) uint64   { return atomic.LoadUint64(word64(b[len(b)-8:])) }

// bump locks the page through view a, checks and increments its counter through view b and
// its copy through view a, and unlocks.
func bump(t *testing.T, a, b []byte, pg int) {
	for !atomic.CompareAndSwapUint32(word32(a), 0, 1) {
		runtime.Gosched()
	}
	c := atomic.LoadUint64(word64(b[8:]))
	if cp := atomic.LoadUint64(word64(a[len(a)-8:])); cp != c {
		t.Errorf("page %d: memory corruption: count %d through one view, copy %d through the other", pg, c, cp)
	}
	atomic.StoreUint64(word64(b[8:]), c+1)
	atomic.StoreUint64(word64(a[len(a)-8:]), c+1)
	atomic.StoreUint32(word32(b), 0) // unlock through the other view
}
