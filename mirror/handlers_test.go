package mirror

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/internal/mem"
	"github.com/mirrormem/mirrormem/uffd"
	"golang.org/x/sys/unix"
)

// The behavioural suite of the fault handlers: every handler kind of this build (the C thread,
// the handler process, the engine in this process) serves every source kind it takes, with
// the same counts, the same log, staging, write tracking and the same answer to a failing
// source. Pages that may be unfilled are touched only with plain Go loops (loopSum, single
// loads), which the in-process engine requires.

// everyHandler lists the handler kinds of this build. HandlerGo needs cgo (its watchdog is a
// C thread): without cgo it is refused, and not listed.
func everyHandler() []handlerCase {
	hs := outsideGo()
	if fault.NativeAvailable {
		hs = append(hs, handlerCase{"go", WithHandler(HandlerGo)})
	}
	return hs
}

// suiteSource is a source of the suite, with the bytes it must produce.
type suiteSource struct {
	name string
	src  func(t *testing.T) io.ReaderAt
	want func(n int) []byte
}

const failingName = "mirrormem-test/failing"

func init() {
	// A source that is Go code and fails for the pages listed in its config (page numbers,
	// u32 each), serving byte 7 elsewhere.
	RegisterSource(failingName, func(config []byte) (io.ReaderAt, error) {
		bad := map[int64]bool{}
		for len(config) >= 4 {
			bad[int64(binary.LittleEndian.Uint32(config))*int64(alloc.PageSize())] = true
			config = config[4:]
		}
		return failingSource{bad: bad, fails: new(atomic.Int64)}, nil
	})
}

// suiteSources lists the sources h serves: zeros, a file, and a registered Go source (not for
// the C thread, which serves no Go code).
func suiteSources(h handlerCase) []suiteSource {
	ss := []suiteSource{
		{"zero", func(t *testing.T) io.ReaderAt { return nil }, func(n int) []byte { return make([]byte, n) }},
		{"file", func(t *testing.T) io.ReaderAt { f, _ := patternFile(t, 1<<20); return f }, func(n int) []byte {
			data := make([]byte, n) // patternFile's bytes
			for i := range data {
				data[i] = byte(i*13 + i/4096 + 1)
			}
			return data
		}},
		// A memfd sealed against shrinking: the handlers copy straight from its mapping.
		{"sealed", func(t *testing.T) io.ReaderAt { return sealedPatternMemfd(t, 1<<20) }, func(n int) []byte {
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(i*13 + i/4096 + 1)
			}
			return data
		}},
	}
	if h.name != "native" {
		ss = append(ss, suiteSource{"named", func(t *testing.T) io.ReaderAt {
			return NamedSource(computedName, computedConfig(42, 1<<20, false))
		}, func(n int) []byte {
			b := make([]byte, n)
			computedSource{seed: 42, size: 1 << 20}.ReadAt(b, 0)
			return b
		}})
	}
	return ss
}

// sealedPatternMemfd returns a memfd holding patternFile's n bytes, sealed with F_SEAL_SHRINK.
func sealedPatternMemfd(t *testing.T, n int) *os.File {
	_, data := patternFile(t, n)
	fd, err := mem.MemfdCreate("sealed-source", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "sealed-source")
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		t.Fatal(err)
	}
	return f
}

// forEvery runs f for every handler kind and every source it serves.
func forEvery(t *testing.T, f func(t *testing.T, h handlerCase, s suiteSource)) {
	for _, h := range everyHandler() {
		for _, s := range suiteSources(h) {
			t.Run(h.name+"/"+s.name, func(t *testing.T) { f(t, h, s) })
		}
	}
}

// forOutsideGo runs f as a subtest for every handler that runs outside Go.
func forOutsideGo(t *testing.T, f func(t *testing.T, h handlerCase)) {
	for _, h := range outsideGo() {
		t.Run(h.name, func(t *testing.T) { f(t, h) })
	}
}

// minorShmem reports whether the kernel sends minor faults on shmem (5.14+): then the second
// view's touches are counted, as Minor faults and Mapped pages.
func minorShmem(t *testing.T) bool {
	avail, err := uffd.Available()
	if err != nil {
		t.Fatal(err)
	}
	return avail&uffd.FeatureMinorShmem != 0
}

// Every page is filled once through the view that touched it first and mapped into the other,
// the counts and the log say so, and Verify agrees.
func TestEveryHandlerFillsAndCounts(t *testing.T) {
	const npages = 64
	n := npages * alloc.PageSize()
	forEvery(t, func(t *testing.T, h handlerCase, s suiteSource) {
		src := s.src(t) // a file is closed after the check below
		defer unchanged(t)()
		r := shared(t, n)
		p, closePair := mirrored(t, r, ServeFaults(src), h.opt, VerifyFaults(4096))
		defer closePair()
		loopSum(p.Original())
		loopSum(p.Mirror())
		want := s.want(n)
		if !bytes.Equal(p.Original(), want) || !bytes.Equal(p.Mirror(), want) {
			t.Fatal("the views differ from the source")
		}
		o, m := p.FaultStats()
		if o.Missing == 0 || o.Filled != npages || m.Filled != 0 || o.Bytes != uint64(n) {
			t.Errorf("original %+v: want missing faults and all %d pages filled through it", o, npages)
		}
		if minorShmem(t) && (m.Minor == 0 || m.Mapped != npages || m.Missing != 0) {
			t.Errorf("mirror %+v: want minor faults only, mapping all %d pages", m, npages)
		}
		ev, dropped := p.FaultLog()
		filled, mapped := 0, 0
		for _, e := range ev {
			switch {
			case e.Kind == "missing" && (e.Result == "copied" || e.Result == "zeroed"):
				filled += e.Pages
			case e.Kind == "minor" && e.Result == "continued":
				mapped += e.Pages
			}
		}
		if dropped != 0 || filled != npages || minorShmem(t) && mapped != npages {
			t.Errorf("log of %d entries (%d dropped): %d pages filled, %d mapped; want %d each", len(ev), dropped, filled, mapped, npages)
		}
		if err := p.Verify(); err != nil {
			t.Error(err)
		}
		// Freed pages are served again, from the source, with no invariant broken.
		if err := p.Reset(0, n/2); err != nil {
			t.Fatal(err)
		}
		loopSum(p.Mirror()[:n/2])
		if !bytes.Equal(p.Mirror(), want) {
			t.Error("pages served again after Reset differ from the source")
		}
		if err := p.Verify(); err != nil {
			t.Errorf("after Reset: %v", err)
		}
	})
}

// Staging writes each page into the page cache through the region's memfd and maps it.
func TestEveryHandlerStages(t *testing.T) {
	if !minorShmem(t) {
		t.Skip("staging maps pages with UFFDIO_CONTINUE: minor faults on shmem need Linux 5.14")
	}
	const npages = 32
	n := npages * alloc.PageSize()
	forEvery(t, func(t *testing.T, h handlerCase, s suiteSource) {
		r := memfdRegion(t, "staged", n)
		p, closePair := mirrored(t, r, ServeFaults(s.src(t)), h.opt, StageMinorFaults(), VerifyFaults(1024))
		defer closePair()
		loopSum(p.Mirror())
		loopSum(p.Original())
		if want := s.want(n); !bytes.Equal(p.Original(), want) || !bytes.Equal(p.Mirror(), want) {
			t.Fatal("the views differ from the source")
		}
		// Every fill is staged, none copied. (Which entry comes first is not fixed: with
		// several workers, a fault raised again after a signal may be logged as a minor
		// fault before the staging that put its page in the page cache.)
		ev, _ := p.FaultLog()
		staged := 0
		for _, e := range ev {
			switch e.Result {
			case "staged+continued":
				staged++
			case "copied", "zeroed":
				t.Errorf("log entry %v: a page was filled without staging", e)
			}
		}
		if staged == 0 {
			t.Errorf("no staged page in the log: %v", ev)
		}
		if o, m := p.FaultStats(); m.Filled != npages || o.Filled != 0 {
			t.Errorf("filled through the original %d, the mirror %d: want all %d through the mirror", o.Filled, m.Filled, npages)
		}
		if err := p.Verify(); err != nil {
			t.Error(err)
		}
	})
}

// Write tracking is per view, with every handler.
func TestEveryHandlerTracksWrites(t *testing.T) {
	const n = 16 * 4096
	forEvery(t, func(t *testing.T, h handlerCase, s suiteSource) {
		r := shared(t, n)
		defer r.Close()
		p, err := Mirror(r, ServeFaults(s.src(t)), h.opt, TrackWrites(), FaultAround(0))
		if errors.Is(err, ErrUnsupported) && !mem.KernelAtLeast(5, 19) {
			t.Skipf("kernel older than 5.19 has no write-protect on shmem: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		dirtyTwoPages(t, p)
		if o, _ := p.FaultStats(); o.WP != 2 {
			t.Errorf("write-protect faults: %d, want one per written page (2)", o.WP)
		}
	})
}

// A source that fails for a page poisons it in every view, once: the threads that touch it get
// SIGBUS, never zeros, and FaultErr says why. Serving goes on for the other pages.
func TestEveryHandlerSourceFails(t *testing.T) {
	avail, err := uffd.Available()
	if err != nil || avail&uffd.FeaturePoison == 0 {
		t.Skip("UFFDIO_POISON needs Linux 6.6: without it a failing source ends the program (tested elsewhere)")
	}
	ps := alloc.PageSize()
	for _, h := range everyHandler() {
		t.Run(h.name, func(t *testing.T) {
			defer unchanged(t)()
			n := 8 * ps
			r := shared(t, n)
			defer r.Close()
			var src io.ReaderAt
			if h.name == "native" {
				// The C thread reads files: one that shrinks fails past its new end.
				f, err := os.CreateTemp(t.TempDir(), "src")
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				f.Write(bytes.Repeat([]byte{7}, n))
				src = f
				p, err := Mirror(r, ServeFaults(src), h.opt, FaultAround(0))
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				f.Truncate(int64(2 * ps))
				checkPoisoned(t, p, 2*ps)
				return
			}
			cfg := binary.LittleEndian.AppendUint32(nil, 2)
			p, err := Mirror(r, ServeFaults(NamedSource(failingName, cfg)), h.opt, FaultAround(0))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			checkPoisoned(t, p, 2*ps)
		})
	}
}

// checkPoisoned checks that the page at off is poisoned through both views, that the page
// before it holds byte 7, and that FaultErr reports the source error.
func checkPoisoned(t *testing.T, p *Pair, off int) {
	t.Helper()
	ps := alloc.PageSize()
	if v, faulted := touchRecover(t, p.Original(), off-ps); faulted || v != 7 {
		t.Errorf("a good page: %d (faulted %v), want 7", v, faulted)
	}
	if v, faulted := touchRecover(t, p.Mirror(), off+5); !faulted {
		t.Fatalf("a page whose source failed read %d: want SIGBUS", v)
	}
	if v, faulted := touchRecover(t, p.Original(), off); !faulted {
		t.Errorf("the failed page through the other view read %d: want SIGBUS (poisoned in every view)", v)
	}
	if err := p.FaultErr(); !errors.Is(err, ErrSourceFailed) {
		t.Errorf("FaultErr: %v, want ErrSourceFailed", err)
	}
	if err := p.Populate(off, ps); !errors.Is(err, ErrSourceFailed) {
		t.Errorf("Populate over the poisoned page: %v, want ErrSourceFailed", err)
	}
	if o, m := p.FaultStats(); o.Missing+m.Missing == 0 {
		t.Errorf("no missing fault counted: %+v %+v", o, m)
	}
	if r := p.FaultReport(); !strings.Contains(r, "view 0") {
		t.Errorf("report %q names no view", r)
	}
}
