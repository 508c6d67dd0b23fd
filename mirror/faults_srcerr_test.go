package mirror

import (
	"errors"
	"io"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
)

// failingSource fails (with an error, or with a short read and no error) for the pages in bad
// and serves byte 7 elsewhere.
type failingSource struct {
	bad   map[int64]bool
	short bool
	fails *atomic.Int64
}

func (s failingSource) ReadAt(p []byte, off int64) (int, error) {
	page := int64(alloc.PageSize())
	for i := range p {
		if s.bad[(off+int64(i))/page*page] {
			s.fails.Add(1)
			if s.short {
				return i, nil // a short read without an error: an io.ReaderAt bug, not EOF
			}
			return i, errors.New("boom")
		}
		p[i] = 7
	}
	return len(p), nil
}

// touchRecover reads b[i] with a plain load in a goroutine that turns a fault (SIGBUS) into a
// panic, and reports what happened; it fails t if the load neither returns nor faults in time.
func touchRecover(t *testing.T, b []byte, i int) (v byte, faulted bool) {
	t.Helper()
	type res struct {
		v       byte
		faulted bool
	}
	ch := make(chan res, 1)
	go func() {
		old := debug.SetPanicOnFault(true)
		defer debug.SetPanicOnFault(old)
		defer func() {
			if recover() != nil {
				ch <- res{faulted: true}
			}
		}()
		ch <- res{v: b[i]}
	}()
	select {
	case r := <-ch:
		return r.v, r.faulted
	case <-time.After(30 * time.Second):
		t.Fatalf("touching offset %d neither returned nor faulted in 30s: the fault hangs", i)
		return 0, false
	}
}

// A Go source that fails never hangs the faulting thread nor gives it zeros: the page is
// poisoned (SIGBUS), serving goes on, and FaultErr and Verify say what happened.
func TestServeFaultsGoSourceErrorPoisons(t *testing.T) {
	if !fault.NativeAvailable {
		t.Skip("a Go source is refused without cgo")
	}
	ps := alloc.PageSize()
	for _, short := range []bool{false, true} {
		name := map[bool]string{false: "error", true: "short"}[short]
		t.Run(name, func(t *testing.T) {
			defer unchanged(t)()
			n := 8 * ps
			r := shared(t, n)
			defer r.Close()
			src := failingSource{bad: map[int64]bool{int64(2 * ps): true}, short: short, fails: new(atomic.Int64)}
			p, err := Mirror(r, ServeFaults(src), WithHandler(HandlerGo), FaultAround(0))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if _, faulted := touchRecover(t, p.Mirror(), 2*ps+5); !faulted {
				t.Fatal("touching a page whose source read failed did not fault (SIGBUS): it was filled with something")
			}
			if err := p.FaultErr(); !errors.Is(err, ErrSourceFailed) {
				t.Errorf("FaultErr after a source error: %v, want ErrSourceFailed", err)
			}
			if err := p.Verify(); !errors.Is(err, ErrSourceFailed) {
				t.Errorf("Verify after a source error: %v, want ErrSourceFailed", err)
			}
			// Serving goes on for the other pages, through both views.
			if v, faulted := touchRecover(t, p.Original(), 3*ps); faulted || v != 7 {
				t.Errorf("a good page after the error: %d (faulted %v), want 7", v, faulted)
			}
			if v, faulted := touchRecover(t, p.Original(), 2*ps); !faulted {
				t.Errorf("the failed page through the other view: %d, want SIGBUS", v)
			}
			if k := src.fails.Load(); k != 1 {
				t.Errorf("the source failed %d times, want once: the page must be poisoned in every view at once", k)
			}
		})
	}
}

var _ io.ReaderAt = failingSource{}
