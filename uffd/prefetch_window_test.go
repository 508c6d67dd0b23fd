package uffd

import (
	"math"
	"testing"
	"time"
)

const winPage = 4096

// feedRound completes one round of the window's reads, each of the chunk's size and taking
// d(reads, chunk), and returns the duration it fed.
func feedRound(w *prefetchWindow, d func(reads int, chunk int64) time.Duration) time.Duration {
	reads, chunk := w.window(), w.chunk()
	dur := d(reads, chunk)
	for k := max(w.left, 1); k > 0; k-- {
		w.observe(chunk, dur)
	}
	return dur
}

// A local source (a page read in well under localRead) is read at the caps: the window
// reaches InFlight and the chunk MaxRange.
func TestPrefetchWindowLocalReachesCaps(t *testing.T) {
	w := newPrefetchWindow(winPage, 1<<20, 8)
	for r := 0; r < 40; r++ {
		feedRound(w, func(int, int64) time.Duration { return 30 * time.Microsecond })
	}
	if w.window() != 8 || w.chunk() != 1<<20 {
		t.Errorf("window %d reads of %d bytes, want 8 reads of %d", w.window(), w.chunk(), 1<<20)
	}
	// A MaxRange that is not a power of two pages is reached too.
	w = newPrefetchWindow(winPage, 12*winPage, 3)
	for r := 0; r < 40; r++ {
		feedRound(w, func(int, int64) time.Duration { return 30 * time.Microsecond })
	}
	if w.window() != 3 || w.chunk() != 12*winPage {
		t.Errorf("window %d reads of %d bytes, want 3 reads of %d", w.window(), w.chunk(), 12*winPage)
	}
}

// linkModel is a link with a round trip of rtt and perByte per byte through its bottleneck:
// a read takes the round trip, its bytes, and the queue that the other reads in flight build
// beyond what the link carries while one read is served.
func linkModel(rtt, perByte time.Duration) func(reads int, chunk int64) time.Duration {
	return func(reads int, chunk int64) time.Duration {
		one := rtt + time.Duration(chunk)*perByte
		queue := time.Duration(int64(reads)*chunk)*perByte - one
		return one + max(queue, 0)
	}
}

// A slow link (300 us round trip, 100 MB/s): the chunk stops before its bytes cost more
// than half a page's read, and the window settles where the link is kept busy (at least
// a round trip's worth in flight) with a queue of at most half a page's read.
func TestPrefetchWindowSlowLink(t *testing.T) {
	const rtt, perByte = 300 * time.Microsecond, 10 * time.Nanosecond
	link := linkModel(rtt, perByte)
	pageRead := rtt + winPage*perByte
	w := newPrefetchWindow(winPage, 1<<20, 64)
	var last time.Duration
	for r := 0; r < 200; r++ {
		last = feedRound(w, link)
	}
	// 16 KiB costs 464 us, within 1.5x a page's 341 us; 32 KiB does not. A bigger chunk is
	// tried behind the window's queue, which makes it look slower: the chunk errs small.
	if c := w.chunk(); c < 2*winPage || c > 4*winPage {
		t.Errorf("chunk %d bytes, want 8 or 16 KiB", c)
	}
	one := link(1, w.chunk())
	if queue := last - one; queue > pageRead/2 {
		t.Errorf("window %d reads: a queue of %v, more than half a page's read (%v)", w.window(), queue, pageRead/2)
	}
	if inFlight := time.Duration(int64(w.window())*w.chunk()) * perByte; inFlight < one {
		t.Errorf("window %d reads of %d bytes: %v of bytes in flight, less than a read's %v: the link idles", w.window(), w.chunk(), inFlight, one)
	}
	// Steady: more rounds of the same link do not move the window by more than a read.
	was := w.window()
	for r := 0; r < 50; r++ {
		feedRound(w, link)
		if d := w.window() - was; d > 1 || d < -1 {
			t.Fatalf("round %d: window %d, was %d", r, w.window(), was)
		}
	}
}

// A queue that appears (another reader took the link) shrinks the window, by half the first
// time; one that stays between a quarter of a page's read and half of it keeps it; none lets
// it grow again.
func TestPrefetchWindowShrinksGrowsStays(t *testing.T) {
	const page = 400 * time.Microsecond
	w := newPrefetchWindow(winPage, 1<<20, 16)
	// A remote source where every size costs a page's read (and no queue builds): reads of
	// MaxRange, and the window doubles up to the cap.
	for r := 0; r < 20; r++ {
		feedRound(w, func(int, int64) time.Duration { return page })
	}
	if w.window() != 16 || w.grown || w.chunk() != 1<<20 {
		t.Fatalf("window %d reads of %d bytes (grown %v), want 16 of 1 MiB in its first growth", w.window(), w.chunk(), w.grown)
	}
	feedRound(w, func(int, int64) time.Duration { return page + 3*page })
	if w.window() != 8 || !w.grown {
		t.Fatalf("after a queue of 3 pages' reads: window %d (grown %v), want 8, halved", w.window(), w.grown)
	}
	feedRound(w, func(int, int64) time.Duration { return page + 3*page })
	if w.window() != 7 {
		t.Fatalf("after another: window %d, want 7 (one less)", w.window())
	}
	for r := 0; r < 5; r++ {
		feedRound(w, func(int, int64) time.Duration { return page + page*3/8 })
	}
	if w.window() != 7 {
		t.Fatalf("with a queue of 3/8 of a page's read: window %d, want 7 (it stays)", w.window())
	}
	for r := 0; r < 3; r++ {
		feedRound(w, func(int, int64) time.Duration { return page })
	}
	if w.window() != 10 {
		t.Fatalf("with no queue for 3 rounds: window %d, want 10 (one more a round)", w.window())
	}
}

// With no demand fault for a while (quiet), a queue of up to a page's read is no queue: the
// window that a queue of 3/8 of a page's read holds still grows, and one of 1.5 pages' reads
// (which would halve it) holds it.
func TestPrefetchWindowQuiet(t *testing.T) {
	const page = 400 * time.Microsecond
	w := newPrefetchWindow(winPage, 1<<20, 16)
	for r := 0; r < 20; r++ {
		feedRound(w, func(int, int64) time.Duration { return page })
	}
	w.grown, w.reads = true, 6
	w.quiet = true
	for r := 0; r < 2; r++ {
		feedRound(w, func(int, int64) time.Duration { return page + page*3/8 })
	}
	if w.window() != 8 {
		t.Fatalf("quiet, with a queue of 3/8 of a page's read: window %d, want 8 (one more a round)", w.window())
	}
	for r := 0; r < 3; r++ {
		feedRound(w, func(int, int64) time.Duration { return page + page*3/2 })
	}
	if w.window() != 8 {
		t.Fatalf("quiet, with a queue of 1.5 pages' reads: window %d, want 8 (it stays)", w.window())
	}
	w.quiet = false
	feedRound(w, func(int, int64) time.Duration { return page + page*3/2 })
	if w.window() != 7 {
		t.Fatalf("with demand faults, the same queue: window %d, want 7 (one less)", w.window())
	}
}

// The machine's noise delays a few reads of a round: the median ignores them.
func TestPrefetchWindowIgnoresNoise(t *testing.T) {
	const page = 400 * time.Microsecond
	w := newPrefetchWindow(winPage, 1<<20, 8)
	for r := 0; r < 20; r++ {
		feedRound(w, func(int, int64) time.Duration { return page })
	}
	w.grown = true
	w.reads = 6
	for r := 0; r < 4; r++ {
		n := max(w.left, 1)
		for k := 0; k < n; k++ {
			d := page
			if k%3 == 0 {
				d = 20 * page // one read in three descheduled
			}
			w.observe(w.chunk(), d)
		}
	}
	if w.window() != 8 {
		t.Errorf("window %d, want 8: a third of the reads delayed is noise, not a queue", w.window())
	}
}

// Reads shorter than the chunk (the end of a range) are compared with their own class, and a
// big read's minimum bounds the smaller classes'.
func TestPrefetchWindowClasses(t *testing.T) {
	w := newPrefetchWindow(winPage, 1<<20, 8)
	if c := w.classOf(3 * winPage); c != 1 {
		t.Errorf("class of 3 pages %d, want 1", c)
	}
	if c := w.classOf(100); c != 0 {
		t.Errorf("class of 100 bytes %d, want 0", c)
	}
	w.observe(winPage, 500*time.Microsecond)
	w.observe(8*winPage, 300*time.Microsecond)
	if w.base[0] != 300*time.Microsecond || w.base[3] != 300*time.Microsecond {
		t.Errorf("minimums %v, want a page's lowered to the 8-page read's 300us", w.base[:4])
	}
}

// The delay a rate-capped read waits is computed without overflow: a read of 16 GiB at
// 1 GiB/s waits 16 s (n * 1e9 overflowed past about 9 GB and made it negative: no cap).
func TestPaceDelayNoOverflow(t *testing.T) {
	for _, c := range []struct {
		n, rate int64
		want    time.Duration
	}{
		{4096, 1 << 20, 3906250 * time.Nanosecond},
		{16 << 30, 1 << 30, 16 * time.Second},
		{math.MaxInt64, math.MaxInt64, time.Second},
		{1 << 62, 1, 100 * 365 * 24 * time.Hour},
	} {
		if got := paceDelay(c.n, c.rate); got != c.want {
			t.Errorf("paceDelay(%d, %d) = %v, want %v", c.n, c.rate, got, c.want)
		}
	}
}
