package uffd

import "sync/atomic"

// RangeStats are the counters of one handled view: one per Handle call, one per view of a
// HandleViews call, one per view the server added by itself for a duplicate (EventRemap with
// length 0). A view split or moved by later events keeps counting into the same RangeStats.
//
// A page fault counts once in Missing, Minor or WP however it was resolved; the other counters
// say how.
type RangeStats struct {
	// Addr and Len describe the view as it was handled (not as events have changed it since).
	Addr uintptr
	Len  int
	// Object identifies the source object: views of one HandleViews call share it.
	Object int
	// View is the view's index in the HandleViews call (0 for Handle), -1 for a duplicate the
	// server picked up from a remap event.
	View int
	// Gone is set once every part of the view was unmapped (EventUnmap) or the view was Unhandled.
	Gone bool

	Missing uint64 // MISSING faults read
	Minor   uint64 // MINOR faults read
	WP      uint64 // write-protect faults read
	// EEXIST counts pages found already present while resolving (someone else filled them).
	EEXIST uint64
	// Stale counts the faults (of Missing, Minor) whose own page was already present when
	// they were resolved, each also counted in EEXIST: filled through another view, or a fault
	// raised twice (a signal interrupted the first wait, and the thread faulted again before
	// the first message was resolved, as the Go runtime's preemption signal does).
	Stale uint64
	// EAGAIN counts resolves refused because a non-cooperative event was pending.
	EAGAIN uint64
	// Bytes counts bytes mapped into this view by COPY, ZEROPAGE or CONTINUE.
	Bytes uint64
	// AroundPages counts pages resolved beyond the faulting one (fault-around).
	AroundPages uint64
	// Wakes counts UFFDIO_WAKE calls for this view made after a page was resolved through
	// another view of the same object or after EEXIST.
	Wakes uint64
	// SourceErrors counts failed ReadAt calls on the source.
	SourceErrors uint64
	// Poisoned counts pages poisoned after a source error (PoisonOnSourceError).
	Poisoned uint64

	// Latency is the time from reading a fault message to its resolution.
	Latency Histogram
}

// ServerStats are counters of the server as a whole.
type ServerStats struct {
	Reads      uint64 // read(2) calls that returned messages
	Messages   uint64 // messages read
	Unhandled  uint64 // faults on no handled view (refused: Serve returned an error), or on a view just gone (woken)
	Remaps     uint64 // EventRemap (moves and duplicates)
	Duplicates uint64 // EventRemap with length 0 that added a view
	Removes    uint64 // EventRemove
	Unmaps     uint64 // EventUnmap
	Forks      uint64 // EventFork
	// SpinHits counts waits that ended with a message found while spinning, SpinMisses the
	// spins that ended without one (the worker then blocked). See WithoutSpin.
	SpinHits, SpinMisses uint64
}

// liveStats is the atomically updated form of RangeStats.
type liveStats struct {
	missing, minor, wp, eexist, eagain   atomic.Uint64
	stale                                atomic.Uint64
	bytes, around, wakes, srcErr, poison atomic.Uint64
	gone                                 atomic.Bool
	lat                                  liveHist
}

func (l *liveStats) snapshot() RangeStats {
	return RangeStats{
		Gone:         l.gone.Load(),
		Missing:      l.missing.Load(),
		Minor:        l.minor.Load(),
		WP:           l.wp.Load(),
		EEXIST:       l.eexist.Load(),
		Stale:        l.stale.Load(),
		EAGAIN:       l.eagain.Load(),
		Bytes:        l.bytes.Load(),
		AroundPages:  l.around.Load(),
		Wakes:        l.wakes.Load(),
		SourceErrors: l.srcErr.Load(),
		Poisoned:     l.poison.Load(),
		Latency:      l.lat.snapshot(),
	}
}

type liveServerStats struct {
	reads, messages, unhandled                 atomic.Uint64
	remaps, duplicates, removes, unmaps, forks atomic.Uint64
	spinHits, spinMisses                       atomic.Uint64
}

func (l *liveServerStats) snapshot() ServerStats {
	return ServerStats{
		Reads:      l.reads.Load(),
		Messages:   l.messages.Load(),
		SpinHits:   l.spinHits.Load(),
		SpinMisses: l.spinMisses.Load(),
		Unhandled:  l.unhandled.Load(),
		Remaps:     l.remaps.Load(),
		Duplicates: l.duplicates.Load(),
		Removes:    l.removes.Load(),
		Unmaps:     l.unmaps.Load(),
		Forks:      l.forks.Load(),
	}
}
