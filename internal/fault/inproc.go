package fault

import (
	"context"
	"errors"
	"fmt"
	"github.com/mirrormem/mirrormem/internal/mem"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// StartGo serves cfg's faults from src with the engine in this process: goroutines of a
// uffd.Server that record into a block like the other handlers, so that the counters, the page
// states, the log, staging and write tracking are the same. src nil serves cfg.Source (zeros or
// a descriptor).
//
// This is the expert's handler: a goroutine of this process that touches an unfilled page
// inside runtime assembly (copy, clear, ...) can never be stopped by the garbage collector,
// which then waits for it while the server, stopped with the world, cannot run (see the
// package documentation). The caller must rule that out, or catch it with a Watchdog.
//
// onFatal is called (from the serving goroutine) if serving stops on an error: a source
// error that cannot be poisoned, a failed ioctl. stopWait bounds how long Stop waits for a
// read of src in flight.
func StartGo(cfg Config, src io.ReaderAt, onFatal func(error), stopWait time.Duration) (*Handler, error) {
	page := os.Getpagesize()
	if err := cfg.check(page); err != nil {
		return nil, err
	}
	if cfg.Source == SourceNamed || cfg.Source == SourceMem && src == nil {
		return nil, errors.New("fault: StartGo serves a Go source, zeros or a descriptor")
	}
	b, err := newHandlerBlock(&cfg, -1, page)
	if err != nil {
		return nil, err
	}
	var stage *os.File
	if cfg.AliasFD >= 0 {
		fd, err := mem.DupCloexec(cfg.AliasFD)
		if err != nil {
			b.unmap()
			return nil, err
		}
		stage = os.NewFile(uintptr(fd), "alias")
	}
	pc := &procConfig{Views: cfg.Views, Len: cfg.Len, Page: page, Source: cfg.Source, SourceFD: cfg.SourceFD,
		AliasFD: cfg.AliasFD, SourceOff: cfg.SourceOff, SourceLen: cfg.SourceLen, MaxAround: cfg.MaxAround,
		Poison: cfg.Poison, Workers: cfg.Workers, Restore: cfg.Restore}
	srv, _, srcMap, err := newEngine(cfg.UFFD, b, pc, src, stage)
	if err != nil {
		if stage != nil {
			stage.Close()
		}
		b.unmap()
		return nil, err
	}
	g := &goEngine{b: b, srv: srv, srcMap: srcMap, stage: stage, wait: stopWait, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	restoreDone := startRestore(ctx, srv, b, pc)
	go func() {
		defer close(g.done)
		err := srv.Serve(ctx)
		cancel() // the prefetch ends with serving
		<-restoreDone
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, uffd.ErrServerClosed) {
			g.mu.Lock()
			g.fatal = err
			g.mu.Unlock()
			if onFatal != nil {
				onFatal(err)
			}
		}
	}()
	return &Handler{b: b, cfg: cfg, page: page, backend: g}, nil
}

// goEngine is the backend of StartGo.
type goEngine struct {
	b        *block
	detached bool // stop returned before the server: it unmaps the block when it ends
	srv      *uffd.Server
	cancel   context.CancelFunc
	done     chan struct{}
	wait     time.Duration
	srcMap   []byte
	stage    *os.File

	mu    sync.Mutex
	fatal error
}

// stop stops the server. A read of the source in flight is waited for up to g.wait; past that
// the serving goroutine is left to finish when the read returns (its result discarded: the
// caller closes the userfaultfd next), and releases what it holds then.
func (g *goEngine) stop() error {
	g.cancel()
	release := func() {
		g.srv.Close()
		if g.srcMap != nil {
			unix.Munmap(g.srcMap)
		}
		if g.stage != nil {
			g.stage.Close()
		}
	}
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case <-g.done:
		release()
	case <-t.C:
		g.detached = true
		go func() {
			<-g.done
			release()
			g.b.unmap()
		}()
	}
	return nil
}

func (g *goEngine) err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fatal != nil {
		return fmt.Errorf("fault: the Go server stopped: %w", g.fatal)
	}
	return nil
}

func (g *goEngine) kind() string { return "go" }

func (g *goEngine) keepsBlock() bool { return g.detached }
