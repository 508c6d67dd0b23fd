package fault

import (
	"context"
	"fmt"
	"os"

	"github.com/mirrormem/mirrormem/uffd"
)

// startRestore runs c.Restore on srv, alongside its Serve, until done or ctx ends: the ranges
// to prefetch, then (Push) every page of the object, at the rate asked. Pages filled already
// are skipped from the shared block without a system call. The returned channel is closed when
// it is over. A failure is written to standard error: prefetch is an optimisation, and demand
// faults still serve (and report) every page.
func startRestore(ctx context.Context, srv *uffd.Server, c *procConfig) <-chan struct{} {
	done := make(chan struct{})
	r := c.Restore
	if !r.active() || len(c.Views) == 0 {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		o := uffd.PrefetchOptions{InFlight: r.InFlight, MaxRange: r.MaxRange}
		if len(r.Prefetch) > 0 {
			if _, err := srv.Prefetch(ctx, c.Views[0], r.Prefetch, o); err != nil {
				if ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "mirrormem: prefetching the working set: %v\n", err)
				}
				return
			}
		}
		if r.Push {
			o.Rate = r.PushRate
			if _, err := srv.Prefetch(ctx, c.Views[0], []uffd.PrefetchRange{{Off: 0, Len: int64(c.Len)}}, o); err != nil && ctx.Err() == nil {
				fmt.Fprintf(os.Stderr, "mirrormem: pushing the remaining pages: %v\n", err)
			}
		}
	}()
	return done
}

// LogCap returns how many log entries the handler keeps (0: no log).
func (h *Handler) LogCap() int { return h.b.l.logcap }
