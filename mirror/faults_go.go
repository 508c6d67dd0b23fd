package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/uffd"
)

// goServing serves a pair whose source is Go code: a uffd.Server in this process, watched by a
// C thread (fault.Watchdog) that aborts the process, with a message, if the program hangs the
// way the package documentation describes (a goroutine faulting inside runtime assembly blocks
// the collector, which blocks the Go server).
type goServing struct {
	srv    *uffd.Server
	cancel context.CancelFunc
	done   chan error
	wd     *fault.Watchdog

	u      *uffd.UFFD
	views  []uintptr
	poison bool

	mu      sync.Mutex
	fatal   error
	srcErrs uint64 // source errors whose page was poisoned
	lastErr error
}

func startGoServing(sv *serving, around int, watchdog time.Duration) (*goServing, error) {
	poison := sv.u.Features()&uffd.FeaturePoison != 0
	g := &goServing{u: sv.u, views: sv.views, poison: poison}
	opts := []uffd.ServerOption{uffd.WithFaultAround(around)}
	if poison {
		// A failed ReadAt poisons the faulting page: the faulting thread gets SIGBUS (a Go
		// program crashes with "unexpected fault address"), never zeros, never a silent hang.
		opts = append(opts, uffd.OnSourceError(uffd.PoisonOnSourceError))
	}
	g.srv = uffd.NewServer(sv.u, opts...)
	var src io.ReaderAt // nil: zero pages
	if sv.src != nil {
		src = &goSource{src: sv.src, g: g, page: int64(os.Getpagesize())}
	}
	if err := g.srv.HandleViews(sv.n, src, sv.views...); err != nil {
		g.srv.Close()
		return nil, err
	}
	if watchdog == 0 {
		watchdog = DefaultWatchdog
	}
	msg := fmt.Sprintf("mirrormem: DEADLOCK: a goroutine touched a page of a mirror served by Go code (ServeFaults with a %s source) "+
		"inside runtime assembly (copy, clear, bytes.Equal, append, ...), which the garbage collector cannot interrupt; the collector "+
		"is waiting for it and the fault server, a goroutine, can never run. Fix: call Pair.Populate on a range before touching it "+
		"with copy(), touch unfilled pages only with plain Go loops or system calls, or serve from an *os.File, a RegionSource or nil "+
		"(served outside Go). Aborting instead of hanging.", sv.srcKind)
	wd, err := fault.StartWatchdog(watchdog, msg)
	if err != nil {
		g.srv.Close()
		return nil, err
	}
	g.wd = wd
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	g.done = make(chan error, 1)
	go func() {
		err := g.srv.Serve(ctx)
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, uffd.ErrServerClosed) {
			g.mu.Lock()
			g.fatal = err
			g.mu.Unlock()
			var serr *uffd.SourceError
			if errors.As(err, &serr) {
				// Without UFFDIO_POISON (Linux 6.6) the faulting thread can never get its
				// bytes: end the program loudly rather than leave it blocked forever, or let
				// Close turn the fault into a zero page.
				panic(fmt.Sprintf("mirrormem: ServeFaults(%s): reading the source failed (%v) and this kernel cannot poison the page (UFFDIO_POISON needs Linux 6.6): the thread that touched it could never get its bytes; aborting instead of hanging", sv.srcKind, serr))
			}
		}
		g.done <- err
	}()
	return g, nil
}

// goCloseWait bounds how long Close waits for a ReadAt of the source in flight (a variable
// for tests).
var goCloseWait = CloseWait

// stop stops the Go server. A ReadAt in flight is waited for up to goCloseWait; past that the
// serving goroutine is detached: it finishes when ReadAt returns (its result discarded, since
// the caller closes the userfaultfd next) and closes the server itself.
func (g *goServing) stop() error {
	g.cancel()
	g.wd.Stop()
	t := time.NewTimer(goCloseWait)
	defer t.Stop()
	select {
	case <-g.done:
		return g.srv.Close()
	case <-t.C:
		go func() {
			<-g.done
			g.srv.Close()
		}()
		return nil
	}
}

// sourceError records a source error for the page at off (poisoned by the server next).
func (g *goServing) sourceError(off int64, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.srcErrs++
	g.lastErr = fmt.Errorf("offset %d: %w", off, err)
}

// goSource is the source as the Go server sees it. The window the server reads starts at the
// faulting page. Past the end of the source (io.EOF) the window is zeros, as documented; a
// read that fails (or comes up short without an error) before the end of the faulting page is
// recorded here, before the server poisons the page and wakes the faulting thread, so that
// FaultErr already reports it when that thread gets its SIGBUS.
type goSource struct {
	src  io.ReaderAt
	g    *goServing
	page int64
}

func (s *goSource) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.src.ReadAt(p, off)
	switch {
	case n >= len(p):
		return len(p), nil
	case errors.Is(err, io.EOF):
		clear(p[n:])
		return len(p), nil
	case int64(n) >= s.page:
		return n, err // the pages read are served; the rest fault again
	}
	if err == nil {
		err = fmt.Errorf("short read of %d bytes with no error (an io.ReaderAt must return one): %w", n, io.ErrUnexpectedEOF)
	}
	if s.g.poison && s.g.inPageCache(off) {
		// Filled through another view since the fault was raised: not lost. The server
		// maps it (UFFDIO_CONTINUE) instead of poisoning it.
		return n, err
	}
	s.g.sourceError(off, err)
	if s.g.poison {
		// The page is lost in every view: poison it in each (EEXIST: mapped there already)
		// and wake them all; the server then finds the faulting view's page poisoned
		// (EEXIST) and wakes it too.
		for _, v := range s.g.views {
			s.g.u.Poison(v+uintptr(off), int(s.page), uffd.DontWake)
		}
		for _, v := range s.g.views {
			s.g.u.Wake(v+uintptr(off), int(s.page))
		}
	}
	return n, err
}

// inPageCache reports whether the page at off is in the page cache already (filled through a
// view): UFFDIO_CONTINUE maps it into the first view where it is not mapped yet, or every
// view maps it (EEXIST).
func (g *goServing) inPageCache(off int64) bool {
	page := os.Getpagesize()
	for _, v := range g.views {
		k, err := g.u.Continue(v+uintptr(off), page, 0)
		if k > 0 {
			return true
		}
		if !errors.Is(err, unix.EEXIST) {
			return false
		}
	}
	return true
}

// err is why serving stopped, or the source errors so far (their pages raise SIGBUS).
func (g *goServing) err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fatal != nil {
		return g.fatal
	}
	if g.srcErrs > 0 {
		return fmt.Errorf("%w: %d source read error(s), their pages poisoned (touching them raises SIGBUS); last: %w", ErrSourceFailed, g.srcErrs, g.lastErr)
	}
	return nil
}

func (g *goServing) stats(i int) FaultStats {
	rs := g.srv.Stats()
	if i >= len(rs) {
		return FaultStats{}
	}
	r := rs[i]
	return FaultStats{Missing: r.Missing, Minor: r.Minor, WP: r.WP, Exists: r.EEXIST, Bytes: r.Bytes}
}
