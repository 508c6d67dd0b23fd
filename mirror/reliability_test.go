package mirror

import (
	"errors"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// The tests of this file are the failure cases a hostile user found: each must end with the
// page served, or with a loud failure, never with zeros, a hang or corrupted memory.

func needPoison(t *testing.T) {
	t.Helper()
	avail, err := uffd.Available()
	if err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	if avail&uffd.FeaturePoison == 0 {
		t.Skip("UFFDIO_POISON needs Linux 6.6: without it a failing source aborts the process")
	}
}

// Options at their absurd extremes are refused with ErrOption, saying which, and leave nothing
// behind; a log size that would overflow the counter block never maps anything.
func TestOptionRefusals(t *testing.T) {
	const n = 4 * 4096
	r := shared(t, n)
	defer r.Close()
	f, _ := patternFile(t, n)
	defer unchanged(t)()
	for _, c := range []struct {
		name string
		opts []Option
		want string
	}{
		{"nil option", []Option{nil}, "option 1 is nil"},
		{"nil third option", []Option{ServeFaults(nil), FaultAround(0), nil}, "option 3 is nil"},
		{"log size overflowing the block", []Option{ServeFaults(nil), VerifyFaults(0x0800000000000010)}, "VerifyFaults"},
		{"log size MaxInt", []Option{ServeFaults(nil), VerifyFaults(math.MaxInt)}, "VerifyFaults"},
		{"log size past MaxFaultLog", []Option{ServeFaults(nil), VerifyFaults(MaxFaultLog + 1)}, "MaxFaultLog"},
		{"negative log size", []Option{ServeFaults(nil), VerifyFaults(math.MinInt)}, "VerifyFaults"},
		{"watchdog 0 without ServeFaults", []Option{Watchdog(0)}, "Watchdog"},
		{"watchdog 1ns", []Option{ServeFaults(nil), WithHandler(HandlerGo), Watchdog(1)}, "Watchdog"},
		{"watchdog too long", []Option{ServeFaults(nil), WithHandler(HandlerGo), Watchdog(math.MaxInt64)}, "Watchdog"},
		{"watchdog with a file source", []Option{ServeFaults(f), Watchdog(time.Second)}, "HandlerGo"},
		{"watchdog with the process handler", []Option{ServeFaults(nil), WithHandler(HandlerProcess), Watchdog(time.Second)}, "HandlerGo"},
		{"fault-around without ServeFaults", []Option{FaultAround(1 << 20)}, "FaultAround needs ServeFaults"},
		{"verify 0 without ServeFaults", []Option{VerifyFaults(0)}, "VerifyFaults needs ServeFaults"},
		{"stage without ServeFaults", []Option{StageMinorFaults()}, "StageMinorFaults needs ServeFaults"},
		{"async without ServeFaults", []Option{TrackWritesAsync()}, "TrackWritesAsync needs ServeFaults"},
		{"negative handler", []Option{ServeFaults(nil), WithHandler(-1)}, "WithHandler(-1)"},
	} {
		p, err := Mirror(r, c.opts...)
		if err == nil {
			p.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want ErrOption saying %q", c.name, err, c.want)
		}
		if _, err := Of(r.Bytes(), c.opts...); !errors.Is(err, ErrOption) {
			t.Errorf("%s: Of: %v, want ErrOption", c.name, err)
		}
	}
}

// The largest log is usable, and FaultLog reads it without running past its end.
func TestVerifyFaultsLargestLog(t *testing.T) {
	const n = 8 * 4096
	defer unchanged(t)()
	forOutsideGo(t, func(t *testing.T, h handlerCase) {
		r := shared(t, n)
		p, closePair := mirrored(t, r, ServeFaults(nil), h.opt, VerifyFaults(MaxFaultLog), FaultAround(0))
		defer closePair()
		loopSum(p.Mirror())
		ev, dropped := p.FaultLog()
		if len(ev) != n/4096 || dropped != 0 {
			t.Errorf("log of %d entries (%d dropped), want %d", len(ev), dropped, n/4096)
		}
	})
}

// A file opened with O_PATH allows no reads: it is refused at Mirror, not discovered by a
// SIGBUS at the first touch.
func TestServeFaultsRefusesOPath(t *testing.T) {
	const n = 4 * 4096
	f, _ := patternFile(t, n)
	fd, err := unix.Open(f.Name(), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	pathF := os.NewFile(uintptr(fd), f.Name())
	defer pathF.Close()
	r := shared(t, n)
	defer r.Close()
	defer unchanged(t)()
	for _, h := range outsideGo() {
		p, err := Mirror(r, ServeFaults(pathF), h.opt)
		if err == nil {
			p.Close()
			t.Fatalf("%s: an O_PATH source was accepted", h.name)
		}
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "O_PATH") {
			t.Errorf("%s: %v, want ErrUnsupported naming O_PATH", h.name, err)
		}
	}
}

// The source file is cut to half its size while faults are served: every page it lost fails
// loudly (SIGBUS) through either view, with and without fault-around; FaultErr and Verify
// report it; the pages it kept read as before. Only bytes past the length the file had at
// Mirror may read as zeros.
func TestSourceTruncatedWhileServing(t *testing.T) {
	needPoison(t)
	const n = 1024 * 4096
	for _, h := range outsideGo() {
		for _, around := range []int{0, DefaultFaultAround} {
			t.Run(h.name+"/around"+strconv.Itoa(around), func(t *testing.T) {
				f, data := patternFile(t, n)
				defer unchanged(t)()
				r := shared(t, n)
				p, closePair := mirrored(t, r, ServeFaults(f), h.opt, FaultAround(around))
				defer closePair()
				page := 4096
				for off := 0; off < n/2; off += 2 * page {
					if v, faulted := touchRecover(t, p.Original(), off); faulted || v != data[off] {
						t.Fatalf("page at %d before the truncation: %d (faulted %v), want %d", off, v, faulted, data[off])
					}
				}
				if err := f.Truncate(n / 2); err != nil {
					t.Fatal(err)
				}
				zeros, served := 0, 0
				for off := n / 2; off < n; off += page {
					views := [][]byte{p.Original(), p.Mirror()}
					v, faulted := touchRecover(t, views[off/page%2], off+page-1)
					switch {
					case !faulted && v == 0:
						zeros++
					case !faulted:
						served++
					}
				}
				if zeros+served > 0 {
					t.Fatalf("of the %d pages the file lost, %d read as zeros and %d as data: want every one to fault", n/2/page, zeros, served)
				}
				for off := page; off < n/2; off += 2 * page {
					if v, faulted := touchRecover(t, p.Mirror(), off); faulted || v != data[off] {
						t.Fatalf("page at %d the file kept: %d (faulted %v), want %d", off, v, faulted, data[off])
					}
				}
				if err := p.FaultErr(); !errors.Is(err, ErrSourceFailed) {
					t.Errorf("FaultErr = %v, want ErrSourceFailed", err)
				}
				if err := p.Verify(); !errors.Is(err, ErrSourceFailed) {
					t.Errorf("Verify = %v, want ErrSourceFailed", err)
				}
			})
		}
	}
}

// A region served again after a pair's Close: the pages the first pair never filled were
// poisoned in the region's mapping (so that nothing read zeros in their place); the next pair
// serves them from its source, after the region was freed (MADV_REMOVE) or untouched.
func TestServeAgainAfterClose(t *testing.T) {
	needPoison(t)
	const n = 16 * 4096
	f, data := patternFile(t, n)
	defer unchanged(t)()
	for _, touched := range []int{0, 4} {
		r := shared(t, n)
		defer r.Close()
		p, err := Mirror(r, ServeFaults(f), FaultAround(0))
		if err != nil {
			t.Fatal(err)
		}
		loopSum(p.Original()[:touched*4096])
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if _, faulted := touchRecover(t, r.Bytes(), 8*4096); !faulted {
			t.Fatal("a page never filled reads after Close: want SIGBUS")
		}
		if touched > 0 {
			if err := unix.Madvise(r.Bytes(), unix.MADV_REMOVE); err != nil {
				t.Fatal(err)
			}
		}
		p, err = Mirror(r, ServeFaults(f), FaultAround(0))
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < n; off += 4096 {
			if v, faulted := touchRecover(t, p.Original(), off+1); faulted || v != data[off+1] {
				t.Fatalf("%d pages touched before: page at %d served again: %d (faulted %v), want %d", touched, off, v, faulted, data[off+1])
			}
		}
		p.Close()
		r.Close()
	}
}
