package mirror

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/internal/gcstress"
	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"github.com/mirrormem/mirrormem/internal/mem"
)

// touchPages reads one byte of each page of b, in order, with a plain loop (no runtime
// assembly: a Go handler may serve b).
func touchPages(b []byte, pages []int) {
	s, page := 0, mem.PageSize()
	for _, p := range pages {
		s += int(b[p*page])
	}
	restoreSink.Add(int64(s))
}

var restoreSink atomic.Int64

// residentPages lists the pages of b in the page cache (mincore).
func residentPages(t *testing.T, b []byte) []int {
	t.Helper()
	page := mem.PageSize()
	vec := make([]byte, len(b)/page)
	if err := mem.Mincore(mem.Ptr(b), uintptr(len(b)), vec); err != nil {
		t.Fatal(err)
	}
	var out []int
	for p, v := range vec {
		if v&1 != 0 {
			out = append(out, p)
		}
	}
	return out
}

// waitProgress waits until at least want pages of p are resident (a condition, not a delay:
// it returns as soon as the handler's page states say so).
func waitProgress(t *testing.T, p *Pair, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		pr, err := p.RestoreProgress()
		if err != nil {
			t.Fatal(err)
		}
		if pr.Resident >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s, %d of the %d pages wanted are resident", pr.Resident, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWorkingSetRoundTrip(t *testing.T) {
	page := mem.PageSize()
	ws := &WorkingSet{PageSize: page, Size: 1 << 30, Runs: []Run{{0, 5, 1}, {1, 3, 7}, {0, 200000, 3}, {1, 0, 1}, {0, 262143, 1}}}
	b, err := ws.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got WorkingSet
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, ws) {
		t.Fatalf("round trip: %+v, want %+v", got, *ws)
	}
	if len(b) > 4+1+3+4+3+len(ws.Runs)*5+4 {
		t.Errorf("%d bytes for %d runs: not compact", len(b), len(ws.Runs))
	}
	if p := got.Pages(1); !reflect.DeepEqual(p, []int{3, 4, 5, 6, 7, 8, 9, 0}) {
		t.Errorf("Pages(1) = %v", p)
	}
	bad := map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("XXWS"), b[4:]...),
		"version":   append(append([]byte("MMWS"), 2), b[5:]...),
		"truncated": b[:len(b)-3],
		"flipped":   append(append([]byte{}, b[:9]...), append([]byte{b[9] ^ 1}, b[10:]...)...),
	}
	for name, data := range bad {
		if err := new(WorkingSet).UnmarshalBinary(data); !errors.Is(err, ErrWorkingSet) || len(err.Error()) > 160 {
			t.Errorf("%s: %v, want a short error matching ErrWorkingSet", name, err)
		}
	}
	outside := &WorkingSet{PageSize: page, Size: 4 * page, Runs: []Run{{0, 3, 2}}}
	if _, err := outside.MarshalBinary(); !errors.Is(err, ErrWorkingSet) {
		t.Errorf("a run past the view: %v, want ErrWorkingSet", err)
	}
}

// encodeRuns encodes a working set the way MarshalBinary does, with no checks: runs are
// {view, page, pages} and the header fields are written as given.
func encodeRuns(pageSize, size uint64, runs ...[3]int64) []byte {
	b := append([]byte("MMWS"), 1)
	b = binary.AppendUvarint(b, pageSize)
	b = binary.AppendUvarint(b, size)
	b = binary.AppendUvarint(b, uint64(len(runs)))
	prev := int64(0)
	for _, r := range runs {
		b = binary.AppendUvarint(b, uint64(r[0]))
		b = binary.AppendVarint(b, r[1]-prev)
		b = binary.AppendUvarint(b, uint64(r[2]-1))
		prev = r[1] + r[2]
	}
	return binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
}

// A working set read from a file may be crafted: its checksum then holds. What decodes costs
// at most in proportion to its bytes and the pair's pages, wherever it goes next: a run that
// overlaps an earlier one of its view (a recorded set has none, and ten thousand runs of a
// whole 1 GiB view are 2.6e9 pages for Restore to walk), a header field out of range (read as
// another value, the set would change silently), a count of runs or pages past the bytes.
func TestWorkingSetHostile(t *testing.T) {
	page := uint64(mem.PageSize())
	bad := map[string][]byte{
		"overlap":          encodeRuns(page, 64*page, [3]int64{0, 0, 64}, [3]int64{1, 0, 64}, [3]int64{0, 63, 1}),
		"overlap inside":   encodeRuns(page, 64*page, [3]int64{0, 10, 20}, [3]int64{0, 12, 2}),
		"page size 2 GiB":  encodeRuns(1<<31, 1<<31),
		"view of 2^60":     encodeRuns(page, 1<<60),
		"page size varint": append(append([]byte("MMWS\x01"), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), 0, 0, 0, 0),
		"2^39 runs":        encodeRuns(page, 64*page)[:0],
		"2^40 pages":       encodeRuns(page, 64*page, [3]int64{0, 0, 1 << 40}),
	}
	b := append([]byte("MMWS\x01"), binary.AppendUvarint(binary.AppendUvarint(binary.AppendUvarint(nil, page), 64*page), 1<<39)...)
	bad["2^39 runs"] = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	for name, data := range bad {
		var ws WorkingSet
		if err := ws.UnmarshalBinary(data); !errors.Is(err, ErrWorkingSet) || len(err.Error()) > 160 {
			t.Errorf("%s: %v (%d runs), want a short error matching ErrWorkingSet", name, err, len(ws.Runs))
		}
	}
	// The same page through two views is two first touches: kept.
	var ws WorkingSet
	if err := ws.UnmarshalBinary(encodeRuns(page, 64*page, [3]int64{0, 0, 64}, [3]int64{1, 0, 64})); err != nil || ws.Len() != 64 {
		t.Errorf("a page per view: %v, Len %d, want 64", err, ws.Len())
	}
	for name, ws := range map[string]*WorkingSet{
		"overlap":         {PageSize: int(page), Size: 64 * int(page), Runs: []Run{{0, 0, 8}, {0, 7, 1}}},
		"page size 2 GiB": {PageSize: 1 << 31, Size: 1 << 31},
	} {
		if _, err := ws.MarshalBinary(); !errors.Is(err, ErrWorkingSet) {
			t.Errorf("MarshalBinary of %s: %v, want ErrWorkingSet (it would not read back the same)", name, err)
		}
		rg := shared(t, 64*int(page))
		if p, err := Mirror(rg, ServeFaults(nil), Restore(RestoreOptions{WorkingSet: ws})); !errors.Is(err, ErrWorkingSet) {
			if err == nil {
				p.Close()
			}
			t.Errorf("Restore with %s: %v, want ErrWorkingSet", name, err)
		}
		rg.Close()
	}
	// Len counts runs, not pages one by one: a run of 2^22 pages costs nothing to count.
	big := &WorkingSet{PageSize: int(page), Size: 1 << 40 * int(page), Runs: []Run{{0, 0, 1 << 22}, {1, 5, 10}, {0, 1 << 30, 3}}}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	n := big.Len()
	runtime.ReadMemStats(&m1)
	if n != 1<<22+3 || m1.TotalAlloc-m0.TotalAlloc > 1<<20 {
		t.Errorf("Len = %d (want %d), allocating %d bytes", n, 1<<22+3, m1.TotalAlloc-m0.TotalAlloc)
	}
}

func FuzzWorkingSetUnmarshal(f *testing.F) {
	ws := &WorkingSet{PageSize: 4096, Size: 1 << 20, Runs: []Run{{0, 1, 2}, {1, 0, 1}}}
	b, _ := ws.MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var ws WorkingSet
		if ws.UnmarshalBinary(data) != nil {
			return
		}
		again, err := ws.MarshalBinary()
		if err != nil {
			t.Fatalf("a decoded working set does not encode: %v", err)
		}
		var ws2 WorkingSet
		if err := ws2.UnmarshalBinary(again); err != nil || !reflect.DeepEqual(ws, ws2) {
			t.Fatalf("re-encoding changed it: %v", err)
		}
	})
}

// restoreHandlers are the handlers Restore runs with in this build.
func restoreHandlers() []Handler {
	hs := []Handler{HandlerAuto, HandlerProcess}
	if fault.NativeAvailable {
		hs = append(hs, HandlerGo)
	}
	return hs
}

// Record a run, then replay it: the working set lists the pages first touched, in order, per
// view; survives encoding; and prefetched on the next pair it fills exactly those pages, so
// that the same run then faults on none of them, through either view.
func TestRestoreRecordReplay(t *testing.T) {
	const pages = 256
	page := mem.PageSize()
	n := pages * page
	src, data := patternFile(t, n)
	r := rand.New(rand.NewSource(3))
	orders := [2][]int{r.Perm(pages)[:40], r.Perm(pages)[:30]}

	p, closePair := mirrored(t, shared(t, n), ServeFaults(src), FaultAround(0), VerifyFaults(1024))
	defer closePair()
	touchPages(p.Original(), orders[0])
	touchPages(p.Mirror(), orders[1])
	ws, err := p.WorkingSet()
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	for v := 0; v < 2; v++ {
		// Every page of an order is new to its view: the recorded order is the order touched.
		if got := ws.Pages(v); !reflect.DeepEqual(got, orders[v]) {
			t.Fatalf("view %d: recorded %v, touched %v", v, got, orders[v])
		}
	}
	b, err := ws.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var loaded WorkingSet
	if err := loaded.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	union := map[int]bool{}
	for _, o := range orders {
		for _, pg := range o {
			union[pg] = true
		}
	}

	for _, h := range restoreHandlers() {
		t.Run(h.String(), func(t *testing.T) {
			p, closePair := mirrored(t, shared(t, n), ServeFaults(src), WithHandler(h), FaultAround(0), Restore(RestoreOptions{WorkingSet: &loaded, MaxRange: 4 * page}))
			defer closePair()
			if h == HandlerAuto && p.FaultHandler() == HandlerNative {
				t.Fatal("Restore with HandlerAuto chose the C thread, which does not prefetch")
			}
			waitProgress(t, p, len(union))
			res := residentPages(t, p.Original())
			if len(res) != len(union) {
				t.Fatalf("%d pages resident after the prefetch, want the %d of the working set", len(res), len(union))
			}
			for _, pg := range res {
				if !union[pg] {
					t.Fatalf("page %d resident, not in the working set", pg)
				}
			}
			touchPages(p.Original(), orders[0])
			touchPages(p.Mirror(), orders[1])
			o, m := p.FaultStats()
			if o.Missing+o.Minor+m.Missing+m.Minor != 0 {
				t.Errorf("the replayed run faulted: original %+v, mirror %+v", o, m)
			}
			if err := p.Verify(); err != nil {
				t.Error(err)
			}
			for pg := range union {
				if p.Original()[pg*page+7] != data[pg*page+7] {
					t.Fatalf("page %d differs from the source", pg)
				}
			}
		})
	}
}

// Push fills every page: WaitResident returns, and touching every page of both views after it
// raises no fault at all. Demand faults through both views race the push, byte for byte checked.
func TestRestorePush(t *testing.T) {
	const pages = 512
	page := mem.PageSize()
	n := pages * page
	src, data := patternFile(t, n)
	ws := &WorkingSet{PageSize: page, Size: n, Runs: []Run{{0, 100, 20}, {1, 7, 3}, {0, 400, 50}}}
	for _, h := range restoreHandlers() {
		t.Run(h.String(), func(t *testing.T) {
			p, closePair := mirrored(t, shared(t, n), ServeFaults(src), WithHandler(h), VerifyFaults(4096),
				Restore(RestoreOptions{WorkingSet: ws, Push: true, InFlight: 3, MaxRange: 8 * page}))
			defer closePair()
			var wg sync.WaitGroup
			for g, v := range [][]byte{p.Original(), p.Mirror()} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, pg := range rand.New(rand.NewSource(int64(g))).Perm(pages)[:100] {
						if v[pg*page+5] != data[pg*page+5] {
							t.Errorf("view %d page %d differs from the source", g, pg)
							return
						}
					}
				}()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := p.WaitResident(ctx); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if pr, _ := p.RestoreProgress(); !pr.Done() || pr.Pages != pages || !pr.Pushed || !pr.Prefetched {
				t.Fatalf("after WaitResident: %+v", pr)
			}
			o0, m0 := p.FaultStats()
			touchPages(p.Original(), seqInts(pages))
			touchPages(p.Mirror(), seqInts(pages))
			o1, m1 := p.FaultStats()
			// Nothing was filled or mapped after the push. A fault the racing goroutines
			// raised before it may still be counted late (its message waited in the queue
			// while the push resolved the page): such a fault finds the page there (EEXIST).
			for v, d := range [][2]FaultStats{{o0, o1}, {m0, m1}} {
				a, b := d[0], d[1]
				if b.Filled != a.Filled || b.Mapped != a.Mapped || (b.Missing-a.Missing)+(b.Minor-a.Minor) != b.Exists-a.Exists {
					t.Errorf("view %d faulted after the push: %+v -> %+v", v, a, b)
				}
			}
			if o1.Filled+m1.Filled != pages {
				t.Errorf("%d + %d pages filled, want each of the %d once", o1.Filled, m1.Filled, pages)
			}
			if err := p.Verify(); err != nil {
				t.Error(err)
			}
		})
	}
}

func seqInts(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// A bounded push rate bounds the push: never more pages than the rate allows since the pair was
// made, so WaitResident times out at first, while the push does progress.
func TestRestorePushRate(t *testing.T) {
	const pages, rate = 256, 64 // pages per second: the push takes 4 s
	page := mem.PageSize()
	src, _ := patternFile(t, pages*page)
	rg := shared(t, pages*page)
	t0 := time.Now()
	p, closePair := mirrored(t, rg, ServeFaults(src), Restore(RestoreOptions{Push: true, PushRate: int64(rate * page), MaxRange: page, InFlight: 1}))
	defer closePair()
	waitProgress(t, p, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := p.WaitResident(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitResident: %v, want a timeout", err)
	}
	pr, _ := p.RestoreProgress()
	if limit := int(time.Since(t0).Seconds()*rate) + 2; pr.Resident > limit || pr.Pushed {
		t.Errorf("%d of %d pages resident (pushed: %v) after %v at %d pages/s: more than %d", pr.Resident, pr.Pages, pr.Pushed, time.Since(t0), rate, limit)
	}
}

func TestRestoreRefuses(t *testing.T) {
	page := mem.PageSize()
	src, _ := patternFile(t, 16*page)
	rg := shared(t, 16*page)
	defer rg.Close()
	cases := []struct {
		name string
		opts []Option
		want error
	}{
		{"without ServeFaults", []Option{Restore(RestoreOptions{Push: true})}, ErrOption},
		{"negative rate", []Option{ServeFaults(src), Restore(RestoreOptions{Push: true, PushRate: -1})}, ErrOption},
		{"other size", []Option{ServeFaults(src), Restore(RestoreOptions{WorkingSet: &WorkingSet{PageSize: page, Size: 32 * page, Runs: []Run{{0, 20, 1}}}})}, ErrWorkingSet},
		{"other view", []Option{ServeFaults(src), Restore(RestoreOptions{WorkingSet: &WorkingSet{PageSize: page, Size: 16 * page, Runs: []Run{{5, 1, 1}}}})}, ErrWorkingSet},
	}
	if fault.NativeAvailable {
		cases = append(cases, struct {
			name string
			opts []Option
			want error
		}{"C thread", []Option{ServeFaults(src), WithHandler(HandlerNative), Restore(RestoreOptions{Push: true})}, ErrOption})
	}
	for _, c := range cases {
		p, err := Mirror(rg, c.opts...)
		if err == nil {
			p.Close()
		}
		if !errors.Is(err, c.want) || len(err.Error()) > 200 {
			t.Errorf("%s: %v, want a short error matching %v", c.name, err, c.want)
		}
	}
	p, err := Mirror(rg, ServeFaults(src))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.WorkingSet(); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "VerifyFaults") {
		t.Errorf("WorkingSet without VerifyFaults: %v", err)
	}
}

const envGCRestore = "MIRRORMEM_TEST_GC_RESTORE" // run the no-hang runs with Restore

// The no-hang test, short, with prefetch and push racing the faults: pages first touched with
// copy() under back-to-back garbage collection, by the handler process (prefetch makes Auto
// choose it), in a subprocess with a timeout.
func TestRestoreNoHangUnderGC(t *testing.T) {
	const size = 8 << 20
	if os.Getenv(envGCRestore) != "" {
		for i := 0; i < 3; i++ {
			restoreNoHangRun(t, size)
		}
		return
	}
	out, err := runChild("TestRestoreNoHangUnderGC", []string{envGCRestore + "=1"}, 2*time.Minute)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the subprocess HUNG (killed after 2 minutes):\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: TestRestoreNoHangUnderGC") {
		t.Fatalf("the subprocess: %v\n%s", err, out)
	}
}

func restoreNoHangRun(t *testing.T, size int) {
	page := mem.PageSize()
	src, data := patternFile(t, size)
	var runs []Run
	for pg := 0; pg < size/page; pg += 64 {
		runs = append(runs, Run{View: pg / 64 % 2, Page: pg, Pages: 16})
	}
	rand.New(rand.NewSource(1)).Shuffle(len(runs), func(i, j int) { runs[i], runs[j] = runs[j], runs[i] })
	ws := &WorkingSet{PageSize: page, Size: size, Runs: runs}
	p, closePair := mirrored(t, shared(t, size), ServeFaults(src), Restore(RestoreOptions{WorkingSet: ws, Push: true}))
	defer closePair()
	stop := gcstress.Loop()
	buf := make([]byte, page)
	views := [2][]byte{p.Original(), p.Mirror()}
	for off := 0; off < size; off += page {
		v := views[(off/page*7/5+off/(1<<20))%2]
		copy(buf, v[off:off+page])
		if !bytes.Equal(buf, data[off:off+page]) {
			t.Fatalf("page at %d differs from the source", off)
		}
	}
	stop()
	if err := p.WaitResident(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Original(), data) || !bytes.Equal(p.Mirror(), data) {
		t.Fatal("views differ from the source")
	}
	if err := p.VerifyHandler(); err != nil {
		t.Fatal(err)
	}
	o, m := p.FaultStats()
	fmt.Printf("%v handler: original %+v, mirror %+v\n", p.FaultHandler(), o, m)
}

// A handler process serving a named source runs several workers, which log faults at once:
// with two goroutines faulting together, the working set still holds every page touched. (Their
// order is not checked: a fault interrupted by a signal lets its thread go on as soon as the page
// is copied, before the fault is recorded.)
func TestWorkingSetSeveralWorkers(t *testing.T) {
	const pages = 512
	page := mem.PageSize()
	src := NamedSource(computedName, computedConfig(3, pages*int64(page), false))
	p, closePair := mirrored(t, shared(t, pages*page), ServeFaults(src), FaultAround(0), VerifyFaults(4*pages))
	defer closePair()
	perm := rand.New(rand.NewSource(9)).Perm(pages)
	orders := [][]int{perm[:pages/2], perm[pages/2:]}
	var wg sync.WaitGroup
	for _, o := range orders {
		wg.Add(1)
		go func() { defer wg.Done(); touchPages(p.Original(), o) }()
	}
	wg.Wait()
	// A thread whose fault a signal interrupted goes on as soon as its page is copied, before
	// the handler records the fault: wait until every fault taken up is in the log, whole.
	deadline := time.Now().Add(20 * time.Second)
	for {
		ev, _ := p.FaultLog()
		o, _ := p.FaultStats()
		whole := true
		for _, e := range ev {
			whole = whole && !strings.HasPrefix(e.Kind, "kind(")
		}
		if whole && uint64(len(ev)) == o.Missing+o.Minor {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s the log has %d entries for %d faults", len(ev), o.Missing+o.Minor)
		}
		time.Sleep(time.Millisecond)
	}
	ws, err := p.WorkingSet()
	if err != nil {
		t.Fatal(err)
	}
	got := ws.Pages(0)
	if len(got) != pages {
		in := map[int]bool{}
		for _, pg := range got {
			in[pg] = true
		}
		ev, dropped := p.FaultLog()
		for pg := 0; pg < pages; pg++ {
			if !in[pg] {
				for _, e := range ev {
					if e.Offset/page == pg {
						t.Logf("log: %v", e)
					}
				}
				o, _ := p.FaultStats()
				t.Logf("page %d not recorded; %d entries, %d dropped; %+v", pg, len(ev), dropped, o)
			}
		}
		t.Fatalf("recorded %d pages, touched %d", len(got), pages)
	}
	seen := map[int]bool{}
	for _, pg := range got {
		seen[pg] = true
	}
	if len(seen) != pages {
		t.Fatalf("recorded %d distinct pages of the %d touched", len(seen), pages)
	}
}

// A held push waits for StartPush: a source completed after the pair was made (as a pre-copy
// fills a store) is pushed with its final bytes, never the ones it had before. Then the push
// runs to full residency, and the pages it filled are counted apart from faulted ones.
func TestRestoreHoldPush(t *testing.T) {
	const pages = 256
	page := mem.PageSize()
	n := pages * page
	for _, h := range restoreHandlers() {
		t.Run(h.String(), func(t *testing.T) {
			defer leakcheck.Check(t)()
			src, err := os.CreateTemp(t.TempDir(), "held")
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if err := src.Truncate(int64(n)); err != nil { // zeros until the "pre-copy" below
				t.Fatal(err)
			}
			p, closePair := mirrored(t, shared(t, n), ServeFaults(src), WithHandler(h), FaultAround(0), Restore(RestoreOptions{Push: true, HoldPush: true, MaxRange: 16 * page}))
			defer closePair()
			// Nothing is pushed while held: WaitResident times out with no page resident.
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if err := p.WaitResident(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("WaitResident on a held push: %v, want a timeout", err)
			}
			if pr, _ := p.RestoreProgress(); pr.Resident != 0 || pr.Pushed || pr.Restored != 0 {
				t.Fatalf("held push filled pages before StartPush: %+v", pr)
			}
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(i*7 + i/page + 1)
			}
			if _, err := src.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			touchPages(p.Mirror(), []int{3, 200}) // two demand faults, not the push's
			if err := p.StartPush(); err != nil {
				t.Fatal(err)
			}
			if err := p.StartPush(); err != nil {
				t.Fatalf("second StartPush: %v", err)
			}
			ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := p.WaitResident(ctx); err != nil {
				t.Fatal(err)
			}
			pr, _ := p.RestoreProgress()
			if !pr.Pushed || pr.Resident != pages || pr.Restored != pages-2 {
				t.Errorf("after the push: %+v, want every page resident, all but the 2 faulted ones restored", pr)
			}
			if !bytes.Equal(p.Original(), data) || !bytes.Equal(p.Mirror(), data) {
				t.Fatal("the views differ from the source's final bytes")
			}
			if err := p.Verify(); err != nil {
				t.Error(err)
			}
		})
	}
}

// StartPush refuses a pair whose push is not held and a closed pair; Restore refuses HoldPush
// and PushRate without Push, which would be ignored.
func TestRestoreStartPushRefuses(t *testing.T) {
	page := mem.PageSize()
	src, _ := patternFile(t, 16*page)
	defer leakcheck.Check(t)()
	fresh := func() *alloc.Region { return shared(t, 16*page) }
	for _, o := range []RestoreOptions{{HoldPush: true}, {PushRate: 1 << 20}} {
		rg := fresh()
		if p, err := Mirror(rg, ServeFaults(src), Restore(o)); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "set Push too") {
			if err == nil {
				p.Close()
			}
			t.Errorf("%+v without Push: %v", o, err)
		}
		rg.Close()
	}
	for _, o := range []RestoreOptions{{Push: true}, {}} {
		p, err := Mirror(fresh(), ServeFaults(src), Restore(o), CloseRegion())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.StartPush(); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "HoldPush") || len(err.Error()) > 160 {
			t.Errorf("StartPush with %+v: %v", o, err)
		}
		p.Close()
		if err := p.StartPush(); !errors.Is(err, ErrClosed) {
			t.Errorf("StartPush after Close: %v", err)
		}
	}
	p, err := Mirror(fresh(), ServeFaults(src), CloseRegion())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.StartPush(); !errors.Is(err, ErrOption) {
		t.Errorf("StartPush on a pair without Restore: %v", err)
	}
}

// A push whose reads fail does not claim the image resident: WaitResident returns the
// restore's error, and the pages it could not read are left to demand faults.
func TestRestorePushReadFails(t *testing.T) {
	const pages = 64
	page := mem.PageSize()
	bad := binary.LittleEndian.AppendUint32(nil, 40)
	p, closePair := mirrored(t, shared(t, pages*page), ServeFaults(NamedSource(failingName, bad)), Restore(RestoreOptions{Push: true, MaxRange: 4 * page}))
	defer closePair()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.WaitResident(ctx); err == nil || !strings.Contains(err.Error(), "Restore stopped on an error") {
		t.Fatalf("WaitResident with a failing read: %v", err)
	}
	pr, _ := p.RestoreProgress()
	if pr.Pushed || pr.Resident != pr.Restored || pr.Resident < pages-4 || pr.Resident >= pages {
		t.Errorf("%+v: want the pages outside the failed read (1 to 4 pages, as the reads are cut) restored, not pushed", pr)
	}
}

const shortReadsName = "mirrormem-test/short-reads"

func init() {
	// A source that is Go code whose reads of more than a page bring half their pages (with
	// an error if config is not empty), byte 7 everywhere.
	RegisterSource(shortReadsName, func(config []byte) (io.ReaderAt, error) {
		return shortReads{fail: len(config) > 0}, nil
	})
}

type shortReads struct{ fail bool }

func (s shortReads) ReadAt(p []byte, off int64) (int, error) {
	page := alloc.PageSize()
	n := len(p)
	if n > page {
		n = n / 2 &^ (page - 1)
	}
	for i := range p[:n] {
		p[i] = 7
	}
	if n < len(p) && s.fail {
		return n, errors.New("cut short")
	}
	return n, nil
}

// A push whose reads come back short (with or without an error) reads the rest again: when
// WaitResident returns, every page is resident in both views, as Pushed promises (the source
// may be gone after it).
func TestRestorePushShortReads(t *testing.T) {
	defer leakcheck.Check(t)()
	const pages = 64
	page := mem.PageSize()
	for _, cfg := range [][]byte{nil, {1}} {
		p, closePair := mirrored(t, shared(t, pages*page), ServeFaults(NamedSource(shortReadsName, cfg)), Restore(RestoreOptions{Push: true, MaxRange: 16 * page}))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := p.WaitResident(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		pr, _ := p.RestoreProgress()
		if !pr.Pushed || pr.Resident != pages || pr.Restored != pages {
			t.Errorf("short reads (error: %v): %+v after WaitResident, want all %d pages pushed", cfg != nil, pr, pages)
		}
		if got := len(residentPages(t, p.Original())); got != pages {
			t.Errorf("short reads (error: %v): %d of %d pages resident after WaitResident", cfg != nil, got, pages)
		}
		closePair()
	}
}
