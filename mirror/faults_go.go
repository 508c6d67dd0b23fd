package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/uffd"
)

// goServing serves a pair whose source is Go code: a uffd.Server in this process, watched by a
// C thread (fault.Watchdog) that aborts the process, with a message, if the program hangs the
// way KERNEL.md section 3 describes.
type goServing struct {
	srv    *uffd.Server
	cancel context.CancelFunc
	done   chan error
	wd     *fault.Watchdog

	mu    sync.Mutex
	fatal error
}

func startGoServing(sv *serving, around int, watchdog time.Duration) (*goServing, error) {
	g := &goServing{srv: uffd.NewServer(sv.u, uffd.WithFaultAround(around))}
	if err := g.srv.HandleViews(sv.n, sv.src, sv.views...); err != nil {
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
		}
		g.done <- err
	}()
	return g, nil
}

func (g *goServing) stop() error {
	g.cancel()
	<-g.done
	err := g.srv.Close()
	g.wd.Stop()
	return err
}

func (g *goServing) err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fatal
}

func (g *goServing) stats(i int) FaultStats {
	rs := g.srv.Stats()
	if i >= len(rs) {
		return FaultStats{}
	}
	r := rs[i]
	return FaultStats{Missing: r.Missing, Minor: r.Minor, WP: r.WP, Exists: r.EEXIST, Bytes: r.Bytes}
}
