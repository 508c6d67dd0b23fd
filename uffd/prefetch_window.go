package uffd

import (
	"math/bits"
	"slices"
	"time"
)

// prefetchWindow decides how many bytes Prefetch reads at once and how many such reads it
// keeps in flight, so that it keeps the source busy without building a queue in front of it.
//
// A read of a network source waits for a round trip, then for its bytes to pass the link's
// bottleneck, behind every byte queued there before it. Reads in flight past what the link
// carries in a round trip only queue up: they fetch no faster, and a demand fault's read (or
// the read of a page the program waits for) is served after them. A link serves its bytes in
// order, so bytes in flight cannot be overtaken; the only way to let a demand fault go first
// is to keep the queue short. The window does so without knowing the link, from the durations
// of its own reads, in the manner of TCP Vegas:
//
//   - Reads are cut to a chunk of a power of two pages. The smallest duration seen is kept per
//     size class (a read's pages rounded down to a power of two): that is a read's cost with
//     no queue. A smaller class's minimum is kept no larger than a bigger one's (a smaller
//     read cannot take longer with no queue). The smallest class's minimum stands for a
//     page's read: what a demand fault costs.
//   - The chunk grows by a class per round while its minimum stays within 1 + 1/chunkSlack
//     times a page's read, or within chunkFloor (a source so fast that size does not matter):
//     where the round trip dominates, a bigger read costs little more. It stops where the
//     bytes' own transfer starts to count, and goes back a class when its minimum exceeds
//     that; a class found too slow is tried again every reprobeRounds rounds (a bigger chunk
//     is tried behind the window's queue, which makes it look slower: the chunk errs small).
//     So the read in front of a demand fault, or the one the program waits for, holds it up
//     by a fraction of a page's read.
//   - The reads allowed in flight are the window. A round is as many reads completed as the
//     window allowed when it began (minRound at least). Each read's queueing delay is its
//     duration less its class's minimum; the round's median decides (a queue delays most
//     reads, the machine's noise a few): up to 1/queueLow of a page's read (or queueFloor) is
//     no queue, and the window grows, doubling until the first queue is seen, then by one
//     read a round; over 1/queueHigh of a page's read (or twice queueFloor) is a queue, and
//     the window shrinks, by half the first time, then by one read a round; in between it
//     stays. A demand fault's read, which queues behind the prefetch bytes at the source, so
//     waits behind a fraction of a page's read. When no demand fault has come for quietReads
//     page reads (a push after the program is done), there is no fault's read to protect,
//     and the bounds are a page's read and two: the machine's noise makes reads look queued,
//     and tight bounds would shrink the window below what keeps the link busy.
//
// A source that reads a page in less than localRead waits for no round trip: it is local
// (memory, the page cache), bound by the CPU or a disk, with no link to queue on, and is read
// at the caps. The window never exceeds InFlight reads nor the chunk MaxRange; for a source
// whose durations do not grow with the window or the chunk, it reaches both. Failed reads are
// not counted. It is not safe for concurrent use: Prefetch guards it with a mutex.
type prefetchWindow struct {
	page     int64
	maxChunk int64 // MaxRange, in bytes, a multiple of page
	maxReads int   // InFlight

	base  [maxWindowClass + 1]time.Duration // per class: the smallest duration seen (0: none yet)
	class int                               // the chunk: page << class bytes (capped at maxChunk)
	reads int                               // the window: reads in flight allowed
	grown bool                              // a queue was seen: grow additively, shrink by one

	left   int                         // reads still to complete in this round
	qs     [roundSamples]time.Duration // the queueing delays of the round's reads (the first ones)
	nq     int
	rounds int
	// quiet: no demand fault came for a while (quietReads page reads): no fault's read to
	// keep the queue short for, so up to a page's read of queue is allowed, and two to drain,
	// for a push to keep a link full through the machine's noise. Set by Prefetch.
	quiet bool
}

const (
	maxWindowClass = 30
	// localRead: a source that reads a page faster than this has no round trip to wait for.
	localRead = 50 * time.Microsecond
	// chunkFloor: a read this short is cheap whatever its size (a local source).
	chunkFloor = 200 * time.Microsecond
	// queueFloor: queueing delays this short are the machine's noise, not a queue.
	queueFloor = 50 * time.Microsecond
	// queueLow, queueHigh: a queueing delay up to 1/queueLow of a page's read is no queue to
	// speak of, one over 1/queueHigh of it is one to drain.
	queueLow  = 4
	queueHigh = 2
	// chunkSlack: a chunk's read may cost a page's read and 1/chunkSlack of it more.
	chunkSlack = 2
	// minRound: the fewest reads of a round, so that the machine's noise does not look like a
	// queue to a window of one read.
	minRound = 4
	// roundSamples: the most reads of a round whose delays are kept.
	roundSamples = 32
	// reprobeRounds: how often a larger chunk found too slow is tried again.
	reprobeRounds = 16
	// quietReads: page reads with no demand fault after which the window is quiet.
	quietReads = 100
)

func newPrefetchWindow(page, maxChunk int64, maxReads int) *prefetchWindow {
	return &prefetchWindow{page: page, maxChunk: max(maxChunk&^(page-1), page), maxReads: max(maxReads, 1), reads: 1, left: 1}
}

// classOf is the size class of a read of n bytes: its pages rounded down to a power of two.
func (w *prefetchWindow) classOf(n int64) int {
	pages := max(n/w.page, 1)
	return min(bits.Len64(uint64(pages))-1, maxWindowClass)
}

// chunk is the bytes of one read.
func (w *prefetchWindow) chunk() int64 {
	if w.class >= w.classOf(w.maxChunk) {
		return w.maxChunk
	}
	return w.page << w.class
}

// pageRead is a page's read with no queue (the smallest class seen stands in; 0 before any).
func (w *prefetchWindow) pageRead() time.Duration {
	for _, b := range w.base {
		if b != 0 {
			return b
		}
	}
	return 0
}

// window is the reads that may be in flight.
func (w *prefetchWindow) window() int { return w.reads }

// observe records a read of n bytes that took d, and adjusts the chunk and the window at the
// end of a round.
func (w *prefetchWindow) observe(n int64, d time.Duration) {
	d = max(d, 1)
	c := w.classOf(n)
	if w.base[c] == 0 || d < w.base[c] {
		w.base[c] = d
		for j := c - 1; j >= 0; j-- {
			if w.base[j] != 0 && w.base[j] > d {
				w.base[j] = d
			}
		}
	}
	if w.nq < len(w.qs) {
		w.qs[w.nq] = d - w.base[c] // not negative: base[c] is at most d
		w.nq++
	}
	if w.left--; w.left > 0 {
		return
	}
	w.endRound()
}

// endRound adjusts the window from the round's queueing delay, then the chunk, and starts the
// next round.
func (w *prefetchWindow) endRound() {
	w.rounds++
	cur := w.classOf(w.chunk())
	// ref: a page's read with no queue, what a demand fault costs.
	ref := w.pageRead()
	top := w.classOf(w.maxChunk)
	if ref < localRead {
		// No round trip: a local source (memory, the page cache), bound by the CPU or the
		// disk, with no link to queue on: the caps.
		w.reads, w.class = w.maxReads, top
		w.left, w.nq = max(w.reads, minRound), 0
		return
	}
	lo, hi := max(ref/queueLow, queueFloor), max(ref/queueHigh, 2*queueFloor)
	if w.quiet {
		lo, hi = max(ref, queueFloor), max(2*ref, 2*queueFloor)
	}
	qs := w.qs[:w.nq]
	slices.Sort(qs)
	q := qs[len(qs)/2]
	switch {
	case q <= lo:
		if w.grown {
			w.reads++
		} else {
			w.reads *= 2
		}
	case q > hi:
		if w.grown {
			w.reads--
		} else {
			w.reads /= 2
			w.grown = true
		}
	}
	w.reads = min(max(w.reads, 1), w.maxReads)

	// The chunk: up while the next class is not known to be slow, down when this one is.
	budget := max(ref+ref/chunkSlack, chunkFloor)
	if w.rounds%reprobeRounds == 0 && cur < top && w.base[cur+1] > budget {
		w.base[cur+1] = 0 // try it again: it may have been measured behind a queue
	}
	switch {
	case w.base[cur] > budget && cur > 0:
		w.class = cur - 1
	case cur < top && w.base[cur] != 0 && (w.base[cur+1] == 0 || w.base[cur+1] <= budget):
		w.class = cur + 1
	default:
		w.class = cur
	}
	w.left, w.nq = max(w.reads, minRound), 0
}
