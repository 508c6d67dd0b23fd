package mirror

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/internal/gcstress"
	"github.com/mirrormem/mirrormem/internal/mem"
	"github.com/mirrormem/mirrormem/internal/mem/memtest"
)

var faultSink int

// loopSum reads b with a plain Go loop: preemptible, no runtime assembly, so it is safe on
// memory served by Go code in this process.
func loopSum(b []byte) int {
	s := 0
	for i := range b {
		s += int(b[i])
	}
	faultSink += s
	return s
}

func patternFile(t testing.TB, n int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*13 + i/4096 + 1)
	}
	return memtest.TempFile(t, data), data
}

// countingReader is a source that is Go code, counting its reads.
type countingReader struct {
	r     io.ReaderAt
	reads atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.r.ReadAt(p, off)
}

type handlerCase struct {
	name string
	opt  Option
}

// outsideGo lists the handlers outside Go this build has.
func outsideGo() []handlerCase {
	hs := []handlerCase{{"process", WithHandler(HandlerProcess)}}
	if fault.NativeAvailable {
		hs = append([]handlerCase{{"native", WithHandler(HandlerNative)}}, hs...)
	}
	return hs
}

// resident counts the resident pages of b (memtest.Resident).
func resident(t testing.TB, b []byte) int {
	t.Helper()
	return memtest.Resident(t, b)
}

// Every page of both views comes from the file, through copy() under forced GC, filled once,
// counted per view; nothing is read before the first touch.
func TestServeFaultsFromFile(t *testing.T) {
	const n = 4 << 20
	f, data := patternFile(t, n)
	forOutsideGo(t, func(t *testing.T, h handlerCase) {
		defer unchanged(t)()
		r := shared(t, n)
		p, closePair := mirrored(t, r, ServeFaults(f), h.opt, VerifyFaults(1<<14))
		defer closePair()
		if got := p.FaultHandler().String(); got != h.name {
			t.Fatalf("handler %s, want %s", got, h.name)
		}
		if o, m := p.FaultStats(); o != (FaultStats{}) || m != (FaultStats{}) || resident(t, p.Original()) != 0 {
			t.Fatalf("pages served before any touch: %+v %+v", o, m)
		}
		defer gcstress.Loop()()
		buf := make([]byte, 4096)
		for off := 0; off < n; off += 4096 {
			v := p.Original()
			if off/4096%2 == 1 {
				v = p.Mirror()
			}
			copy(buf, v[off:off+4096])
			if !bytes.Equal(buf, data[off:off+4096]) {
				t.Fatalf("page at %d differs from the file", off)
			}
		}
		if !bytes.Equal(p.Original(), data) || !bytes.Equal(p.Mirror(), data) {
			t.Fatal("views differ from the file")
		}
		o, m := p.FaultStats()
		if o.Missing == 0 || m.Missing == 0 || o.Minor == 0 || m.Minor == 0 {
			t.Errorf("want missing and minor faults on both views: original %+v mirror %+v", o, m)
		}
		if o.Filled+m.Filled != n/4096 {
			t.Errorf("pages filled %d, want each of the %d pages once", o.Filled+m.Filled, n/4096)
		}
		if err := p.Verify(); err != nil {
			t.Error(err)
		}
		if rep := p.FaultReport(); !strings.Contains(rep, "invariants: held") {
			t.Errorf("report:\n%s", rep)
		}
		ev, _ := p.FaultLog()
		if len(ev) == 0 || ev[0].Kind != "missing" || ev[0].Thread == 0 {
			t.Errorf("log starts with %v", ev[:min(len(ev), 1)])
		}
	})
}

// The source chooses the handler.
func TestServeFaultsChoosesHandler(t *testing.T) {
	const n = 8 * 4096
	f, _ := patternFile(t, n)
	mf := memfdRegion(t, "src", n)
	defer mf.Close()
	outside := HandlerProcess
	if fault.NativeAvailable {
		outside = HandlerNative
	}
	for _, c := range []struct {
		name string
		src  io.ReaderAt
		want Handler
	}{
		{"nil", nil, outside},
		{"file", f, outside},
		{"region", RegionSource(mf), outside},
		{"go", bytes.NewReader(make([]byte, n)), HandlerGo},
		{"section", io.NewSectionReader(f, 0, n), HandlerGo},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer unchanged(t)()
			r := shared(t, n)
			defer r.Close()
			p, err := Mirror(r, ServeFaults(c.src))
			if c.want == HandlerGo {
				// Never picked silently: the fix (a registered constructor) is named.
				if !errors.Is(err, ErrGoSource) || !errors.Is(err, ErrUnsupported) {
					t.Fatalf("Go source without WithHandler(HandlerGo): %v, want ErrGoSource", err)
				}
				for _, w := range []string{"RegisterSource(", "init function", "NamedSource("} {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("the refusal does not mention %q: %v", w, err)
					}
				}
				p, err = Mirror(r, ServeFaults(c.src), WithHandler(HandlerGo))
				if !fault.NativeAvailable {
					if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "HandlerGo needs cgo") {
						t.Fatalf("Go source without cgo: %v, want ErrUnsupported naming the reason", err)
					}
					return
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if p.FaultHandler() != c.want {
				t.Errorf("handler %v, want %v", p.FaultHandler(), c.want)
			}
		})
	}
}

// Region sources: an alloc.Shared region (no descriptor: copied from memory by the native
// handler, opened through map_files for a handler process) and an alloc.Memfd region (pread).
func TestServeFaultsFromRegion(t *testing.T) {
	const n = 64 * 4096
	for _, kind := range []string{"shared", "memfd"} {
		for _, h := range outsideGo() {
			t.Run(kind+"/"+h.name, func(t *testing.T) {
				var src *alloc.Region
				var err error
				if kind == "shared" {
					src, err = alloc.Shared(n)
				} else {
					src, err = alloc.Memfd("src", n)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer src.Close()
				for i := range src.Bytes() {
					src.Bytes()[i] = byte(i % 251)
				}
				r := shared(t, n)
				p, closePair := mirrored(t, r, ServeFaults(RegionSource(src)), h.opt)
				defer closePair()
				if !bytes.Equal(p.Mirror(), src.Bytes()) || !bytes.Equal(p.Original(), src.Bytes()) {
					t.Fatal("views differ from the source region")
				}
			})
		}
	}
}

func TestServeFaultsZeroFill(t *testing.T) {
	const n = 16 * 4096
	forOutsideGo(t, func(t *testing.T, h handlerCase) {
		r := shared(t, n)
		p, closePair := mirrored(t, r, ServeFaults(nil), h.opt, Adjacent())
		defer closePair()
		if !bytes.Equal(p.Contiguous(), make([]byte, 2*n)) {
			t.Fatal("zero-filled views are not zero")
		}
		p.Mirror()[5] = 9
		if p.Original()[5] != 9 {
			t.Fatal("views do not share")
		}
		if o, m := p.FaultStats(); o.Missing == 0 || m.Minor == 0 {
			t.Errorf("stats %+v %+v", o, m)
		}
	})
}

// A source that is Go code: pages are served by a uffd.Server in this process. Populate makes
// a range safe for copy(); nothing is read before.
func TestServeFaultsGoSourcePopulate(t *testing.T) {
	if !fault.NativeAvailable {
		t.Skip("a Go source is refused without cgo (TestServeFaultsChoosesHandler checks the refusal)")
	}
	const n = 1 << 20
	_, data := patternFile(t, n)
	src := &countingReader{r: bytes.NewReader(data)}
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(src), WithHandler(HandlerGo))
	defer closePair()
	if src.reads.Load() != 0 {
		t.Fatalf("%d reads before any touch", src.reads.Load())
	}
	if err := p.Populate(0, n); err != nil {
		t.Fatal(err)
	}
	defer gcstress.Loop()()
	if !bytes.Equal(p.Original(), data) || !bytes.Equal(p.Mirror(), data) { // safe: populated
		t.Fatal("views differ from the source")
	}
	o, m := p.FaultStats()
	if o.Missing == 0 || m.Minor == 0 {
		t.Errorf("stats: original %+v mirror %+v", o, m)
	}
	if err := p.Verify(); err != nil {
		t.Error(err)
	}
	if err := p.Populate(1, 4096); !errors.Is(err, ErrRange) {
		t.Errorf("Populate of an unaligned range: %v, want ErrRange", err)
	}
}

// MADV_DONTNEED (Discard) on shared memory drops one view's mappings only: the page and its
// writes stay, the next touch is a minor fault. MADV_REMOVE (Reset) frees the page: the next
// touch is a missing fault, served again from the source, and the handler knows it is no
// second fill.
func TestDiscardVersusReset(t *testing.T) {
	const n = 4 * 4096
	f, data := patternFile(t, n)
	forOutsideGo(t, func(t *testing.T, h handlerCase) {
		r := shared(t, n)
		p, closePair := mirrored(t, r, ServeFaults(f), h.opt, FaultAround(0))
		defer closePair()
		p.Original()[0] = data[0] + 1
		if err := p.Discard(0, 0, 4096); err != nil {
			t.Fatal(err)
		}
		if p.Original()[0] != data[0]+1 {
			t.Fatal("Discard lost a write: MADV_DONTNEED freed a shared page")
		}
		o, _ := p.FaultStats()
		if o.Missing != 1 || o.Minor != 1 || o.Filled != 1 {
			t.Fatalf("after Discard: %+v, want 1 missing, 1 minor, 1 page filled", o)
		}
		if err := p.Reset(0, 4096); err != nil {
			t.Fatal(err)
		}
		if p.Mirror()[0] != data[0] {
			t.Fatal("after Reset the page was not served again from the source")
		}
		o, m := p.FaultStats()
		if m.Missing != 1 || o.Filled+m.Filled != 2 {
			t.Fatalf("after Reset: %+v %+v", o, m)
		}
		if err := p.Verify(); err != nil {
			t.Errorf("refill after Reset: %v", err)
		}
	})
}

// Minor-fault staging through the region's memfd.
func TestStageMinorFaults(t *testing.T) {
	const n = 256 * 4096
	f, data := patternFile(t, n)
	forOutsideGo(t, func(t *testing.T, h handlerCase) {
		r := memfdRegion(t, "staged", n)
		p, closePair := mirrored(t, r, ServeFaults(f), h.opt, StageMinorFaults(), VerifyFaults(1024))
		defer closePair()
		defer gcstress.Loop()()
		if !bytes.Equal(p.Mirror(), data) || !bytes.Equal(p.Original(), data) {
			t.Fatal("views differ from the source")
		}
		ev, _ := p.FaultLog()
		if len(ev) == 0 || ev[0].Result != "staged+continued" {
			t.Errorf("first log entry %v, want a staged page", ev[:min(1, len(ev))])
		}
		if err := p.Verify(); err != nil {
			t.Error(err)
		}
	})
	r := shared(t, n)
	defer r.Close()
	defer unchanged(t)()
	if _, err := Mirror(r, ServeFaults(f), StageMinorFaults()); !errors.Is(err, ErrUnsupported) {
		t.Errorf("staging on a region without memfd: %v, want ErrUnsupported", err)
	}
}

// Dirty tracking is per view: TrackDirty(0) sees the writes through view 0 only, including
// pages first mapped after tracking started.
func TestTrackDirty(t *testing.T) {
	const n = 16 * 4096
	var cases []handlerCase
	for _, h := range outsideGo() {
		cases = append(cases, handlerCase{h.name, h.opt}, handlerCase{h.name + "/async", h.opt})
	}
	for _, h := range cases {
		t.Run(h.name, func(t *testing.T) {
			track := TrackWrites()
			if strings.HasSuffix(h.name, "/async") {
				track = TrackWritesAsync()
			}
			r := shared(t, n)
			defer r.Close()
			p, err := Mirror(r, ServeFaults(nil), h.opt, track, FaultAround(0))
			// Write-protect on shmem is 5.19, WP_ASYNC 6.7: skip only where the kernel is older.
			if errors.Is(err, ErrUnsupported) {
				if strings.HasSuffix(h.name, "/async") && !mem.KernelAtLeast(6, 7) {
					t.Skipf("kernel older than 6.7 has no UFFD_FEATURE_WP_ASYNC: %v", err)
				}
				if !mem.KernelAtLeast(5, 19) {
					t.Skipf("kernel older than 5.19 has no write-protect on shmem: %v", err)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			dirtyTwoPages(t, p)
			o, _ := p.FaultStats()
			if async := strings.HasSuffix(h.name, "/async"); async && o.WP != 0 || !async && o.WP != 2 {
				t.Errorf("write-protect faults sent to the handler: %d (the kernel resolves them with WP_ASYNC; else one per written page)", o.WP)
			}
			if err := p.TrackDirty(0); err != nil {
				t.Fatal(err)
			}
			if d, _ := p.Dirty(0); len(d) != 0 {
				t.Errorf("a new epoch starts clean, got %v", d)
			}
			p.Original()[1*4096] = 2
			if d, _ := p.Dirty(0); !equalInts(d, []int{4096}) {
				t.Errorf("second epoch: %v", d)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Options that need ServeFaults, and refusals, leave nothing behind.
func TestServeFaultsRefusals(t *testing.T) {
	const n = 4 * 4096
	r := shared(t, n)
	defer r.Close()
	wo, err := os.OpenFile(t.TempDir()+"/wo", os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer wo.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	defer unchanged(t)()
	for name, opts := range map[string][]Option{
		"verify without serve":  {VerifyFaults(10)},
		"track without serve":   {TrackWrites()},
		"handler without serve": {WithHandler(HandlerProcess)},
		"negative log":          {ServeFaults(nil), VerifyFaults(-1)},
		"unknown handler":       {ServeFaults(nil), WithHandler(Handler(42))},
		"too many views":        {ServeFaults(nil), Views(fault.MaxViews + 1)},
		"go verify":             {ServeFaults(bytes.NewReader(nil)), VerifyFaults(10)},
		"go handler file":       {ServeFaults(bytes.NewReader(nil)), WithHandler(HandlerNative)},
		"write-only file":       {ServeFaults(wo)},
		"pipe":                  {ServeFaults(pr)},
		"nil region source":     {ServeFaults(RegionSource(nil))},
		"nil file":              {ServeFaults((*os.File)(nil))},
		"nil typed source":      {ServeFaults((*countingReader)(nil)), WithHandler(HandlerGo)},
		"huge views":            {Views(1 << 40)},
		"huge adjacent views":   {Views(1 << 40), Adjacent()},
	} {
		if p, err := Mirror(r, opts...); err == nil {
			p.Close()
			t.Errorf("%s: accepted", name)
		} else if !errors.Is(err, ErrRange) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrOption) {
			t.Errorf("%s: %v, want ErrRange, ErrUnsupported or ErrOption", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	// A fault-around cap beyond MaxFaultAround is clamped, not refused.
	if p, err := Mirror(r, ServeFaults(nil), FaultAround(1<<40)); err != nil {
		t.Errorf("FaultAround(1<<40): %v, want it clamped to MaxFaultAround", err)
	} else {
		p.Close()
	}
	if p, err := Mirror(r); err != nil {
		t.Fatal(err)
	} else {
		if _, err := p.Dirty(0); !errors.Is(err, ErrNotServing) {
			t.Errorf("Dirty without ServeFaults: %v", err)
		}
		p.Close()
	}
}

// Many views, each registered and served.
func TestServeFaultsManyViews(t *testing.T) {
	const n = 32 * 4096
	f, data := patternFile(t, n)
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(f), Views(4))
	defer closePair()
	for i := 3; i >= 0; i-- {
		if !bytes.Equal(p.View(i), data) {
			t.Fatalf("view %d differs", i)
		}
	}
	if s := p.ViewFaultStats(3); s.Missing == 0 {
		t.Errorf("view 3 served nothing: %+v", s)
	}
	for i := 0; i < 3; i++ {
		if s := p.ViewFaultStats(i); s.Minor == 0 {
			t.Errorf("view %d has no minor faults: %+v", i, s)
		}
	}
}

// The handler process dies: its standby takes over at once, the pair keeps serving the file's
// bytes (never zeros), and FaultReport tells. The case where every handler dies (a panic that
// names the cause) is tested in internal/fault.
func TestFaultHandlerProcessDies(t *testing.T) {
	const n = 64 * 4096
	f, data := patternFile(t, n)
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(f), WithHandler(HandlerProcess), FaultAround(0))
	defer closePair()
	pids := p.FaultHandlerPids()
	if len(pids) != 2 {
		t.Fatalf("handler pids %v, want a primary and a standby", pids)
	}
	copy(make([]byte, 4096), p.Original()[:4096])
	if err := unix.Kill(pids[0], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Mirror(), data) || !bytes.Equal(p.Original(), data) {
		t.Fatal("after the handler died the views differ from the file")
	}
	if err := p.FaultErr(); err != nil {
		t.Errorf("FaultErr = %v with the standby serving", err)
	}
	if rep := p.FaultReport(); !strings.Contains(rep, "standby took over") {
		t.Errorf("report does not tell of the takeover:\n%s", rep)
	}
}

// The verification log is bounded: it keeps the first entries and counts the rest.
func TestFaultLogIsBounded(t *testing.T) {
	const n = 16 * 4096
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(nil), VerifyFaults(4), FaultAround(0))
	defer closePair()
	loopSum(p.Original())
	ev, dropped := p.FaultLog()
	if len(ev) != 4 || dropped != n/4096-4 {
		t.Fatalf("log kept %d entries and dropped %d; want 4 and %d", len(ev), dropped, n/4096-4)
	}
	for i, e := range ev {
		if e.View != 0 || e.Offset != i*4096 || e.Kind != "missing" || e.Result != "zeroed" || e.Pages != 1 {
			t.Errorf("entry %d: %v", i, e)
		}
	}
	if rep := p.FaultReport(); !strings.Contains(rep, "dropped") {
		t.Errorf("report does not tell of the dropped entries:\n%s", rep)
	}
}

// dirtyTwoPages maps the first 8 pages of p (of 16 or more), starts tracking view 0, writes
// pages 1 (twice: the second write makes no new fault) and 10 through view 0 and page 3
// through view 1, and checks that view 0 reports pages 1 and 10 dirty and view 1 nothing.
func dirtyTwoPages(t *testing.T, p *Pair) {
	t.Helper()
	loopSum(p.Original()[:8*4096]) // half the pages mapped before tracking
	if err := p.TrackDirty(0); err != nil {
		t.Fatal(err)
	}
	p.Original()[1*4096] = 1
	p.Original()[10*4096+5] = 1 // mapped after tracking started
	p.Mirror()[3*4096] = 1      // view 1 is not tracked
	p.Original()[1*4096+1] = 1  // same page again: no new fault
	d, err := p.Dirty(0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1 * 4096, 10 * 4096}; !equalInts(d, want) {
		t.Errorf("dirty pages of view 0: %v, want %v", d, want)
	}
	if d1, _ := p.Dirty(1); len(d1) != 0 {
		t.Errorf("view 1 untracked, yet dirty %v", d1)
	}
}
