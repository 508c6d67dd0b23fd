package fault

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/mirrormem/mirrormem/uffd"
)

// startRestore runs c.Restore on srv, alongside its Serve, until done or ctx ends: the ranges
// to prefetch, then (Push) every page of the object, at the rate asked. Pages filled already
// are skipped from the shared block without a system call. The returned channel is closed when
// it is over. A failure is written to standard error: prefetch is an optimisation, and demand
// faults still serve (and report) every page.
func startRestore(ctx context.Context, srv *uffd.Server, b *block, c *procConfig) <-chan struct{} {
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
				if ctx.Err() == nil && !errors.Is(err, uffd.ErrViewGone) { // gone: the pair is closing
					fmt.Fprintf(os.Stderr, "mirrormem: prefetching the working set: %v\n", err)
					b.orHdr(hRestore, RestoreFailed)
				}
				return
			}
		}
		b.orHdr(hRestore, RestorePrefetched)
		if r.Push {
			// Pages filled by demand faults are mapped into every view too: after the push,
			// nothing faults any more.
			o.Rate, o.MapFilled = r.PushRate, true
			_, err := srv.Prefetch(ctx, c.Views[0], []uffd.PrefetchRange{{Off: 0, Len: int64(c.Len)}}, o)
			switch {
			case err == nil:
				b.orHdr(hRestore, RestorePushed)
			case ctx.Err() == nil && !errors.Is(err, uffd.ErrViewGone):
				fmt.Fprintf(os.Stderr, "mirrormem: pushing the remaining pages: %v\n", err)
				b.orHdr(hRestore, RestoreFailed)
			}
		}
	}()
	return done
}

// hRestore is the header word after the error text: the RestoreXxx bits of the engine's
// restore (handlers in Go only: the C thread never restores).
const hRestore = hErrText + errTextLen/8

var _ [hWords - hRestore - 1]int // it fits in the header

// Bits of the restore state.
const (
	RestorePrefetched = 1 // the working set is prefetched
	RestorePushed     = 2 // every page is filled and mapped into every view
	RestoreFailed     = 4 // the prefetch or the push stopped on an error (written to standard error)
)

// RestoreState returns the RestoreXxx bits of the handler's restore.
func (h *Handler) RestoreState() uint64 { return h.b.hdr(hRestore) }

// LogCap returns how many log entries the handler keeps (0: no log).
func (h *Handler) LogCap() int { return h.b.l.logcap }

// orHdr sets bits in header word i.
func (b *block) orHdr(i int, bits uint64) {
	for {
		old := b.hdr(i)
		if b.casHdr(i, old, old|bits) {
			return
		}
	}
}

// nextHdr adds one to header word i and returns the value it had.
func (b *block) nextHdr(i int) uint64 {
	for {
		old := b.hdr(i)
		if b.casHdr(i, old, old+1) {
			return old
		}
	}
}
