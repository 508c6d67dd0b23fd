package fault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mirrormem/mirrormem/uffd"
)

// startRestore runs c.Restore on srv, alongside its Serve, until done or ctx ends: the ranges
// to prefetch, then (Push) every page of the object, at the rate asked, once the served
// process started it (HoldPush). Pages filled already are skipped from the shared block
// without a system call. The returned channel is closed when it is over. A failure is written
// to standard error: prefetch is an optimisation, and demand faults still serve (and report)
// every page.
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
			st, err := srv.Prefetch(ctx, c.Views[0], r.Prefetch, o)
			b.addHdr(hRestored, uint64(st.Filled))
			if err != nil {
				restoreFailed(ctx, b, "prefetching the working set", err)
				return
			}
		}
		b.orHdr(hRestore, RestorePrefetched)
		if !r.Push || r.HoldPush && !waitPushStart(ctx, b) {
			return
		}
		// Pages filled by demand faults are mapped into every view too: after the push,
		// nothing faults any more.
		o.Rate, o.MapFilled = r.PushRate, true
		st, err := srv.Prefetch(ctx, c.Views[0], []uffd.PrefetchRange{{Off: 0, Len: int64(c.Len)}}, o)
		b.addHdr(hRestored, uint64(st.Filled))
		if err == nil && st.Errors > 0 {
			// The pages of a failed read are left to demand faults: the image is not resident.
			err = fmt.Errorf("%d read(s) of the source failed (the first: %w); demand faults serve or poison their pages", st.Errors, st.ReadErr)
		}
		if err != nil {
			restoreFailed(ctx, b, "pushing the remaining pages", err)
			return
		}
		b.orHdr(hRestore, RestorePushed)
	}()
	return done
}

// restoreFailed records that the restore stopped on err, unless it stopped because serving
// ended (ctx done, the server closed) or the pair is closing (its view went away).
func restoreFailed(ctx context.Context, b *block, what string, err error) {
	if ctx.Err() != nil || errors.Is(err, uffd.ErrViewGone) || errors.Is(err, uffd.ErrServerClosed) {
		return
	}
	fmt.Fprintf(os.Stderr, "mirrormem: %s: %v\n", what, err)
	b.orHdr(hRestore, RestoreFailed)
}

// pushStartPoll is how often a held push looks for RestoreStartPush: the served process sets
// a bit of shared memory, and no thread of it may be needed to wake this one.
const pushStartPoll = time.Millisecond

// waitPushStart waits until the served process sets RestoreStartPush; false if ctx ends first.
func waitPushStart(ctx context.Context, b *block) bool {
	t := time.NewTicker(pushStartPoll)
	defer t.Stop()
	for b.hdr(hRestore)&RestoreStartPush == 0 {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// The restore's words live in view 0's spare counter words, which neither native.c nor the
// counters of a view use: every header word is taken (the native thread's id, which only the C
// thread writes, is the last free-looking one, so the restore state must not share it).
const (
	cRestore  = cAround + 1 // the RestoreXxx bits
	cRestored = cAround + 2 // pages the prefetch and the push filled themselves

	hRestore  = hWords + cRestore // as header indices: the counters follow the header
	hRestored = hWords + cRestored
)

var _ [cWords - cRestored - 1]int // they fit in a view's counters

// Bits of the restore state.
const (
	RestorePrefetched = 1 // the working set is prefetched
	RestorePushed     = 2 // every page is filled and mapped into every view
	RestoreFailed     = 4 // the prefetch or the push stopped on an error (written to standard error)
	RestoreStartPush  = 8 // the served process started a held push (StartPush)
)

// RestoreState returns the RestoreXxx bits of the handler's restore.
func (h *Handler) RestoreState() uint64 { return h.b.hdr(hRestore) }

// Restored returns how many pages the prefetch and the push filled themselves (not demand
// faults), counted when each of them ends.
func (h *Handler) Restored() int { return int(h.b.hdr(hRestored)) }

// StartPush lets a push held by Restore.HoldPush begin: the handler sees it within about a
// millisecond. Calling it again does nothing.
func (h *Handler) StartPush() { h.b.orHdr(hRestore, RestoreStartPush) }

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

// HoldsPush reports whether the handler's push waits for StartPush (Restore.HoldPush).
func (h *Handler) HoldsPush() bool { return h.cfg.Restore.Push && h.cfg.Restore.HoldPush }
