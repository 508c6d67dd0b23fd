package uffd

import (
	"fmt"
	"math/bits"
	"strings"
	"sync/atomic"
	"time"
)

// histBuckets is the number of power-of-two latency buckets: bucket i counts latencies in
// [2^i, 2^(i+1)) nanoseconds (bucket 0 also holds 0 ns), so the last one starts at about 2.3 minutes.
const histBuckets = 48

// Histogram is a latency histogram with power-of-two buckets in nanoseconds. The zero value is
// empty. It is a snapshot: the Server's live histograms are updated with atomics and copied out
// by Stats.
type Histogram struct {
	// Buckets[i] counts latencies in [2^i, 2^(i+1)) ns; Buckets[0] also counts 0 ns.
	Buckets [histBuckets]uint64
	// Count is the number of samples.
	Count uint64
	// Sum is the total of the samples' latencies.
	Sum time.Duration
}

// liveHist is the concurrently updated form of Histogram.
type liveHist struct {
	buckets [histBuckets]atomic.Uint64
	count   atomic.Uint64
	sum     atomic.Int64
}

func histBucket(d time.Duration) int {
	if d <= 1 {
		return 0
	}
	b := bits.Len64(uint64(d)) - 1
	if b >= histBuckets {
		b = histBuckets - 1
	}
	return b
}

func (h *liveHist) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.buckets[histBucket(d)].Add(1)
	h.count.Add(1)
	h.sum.Add(int64(d))
}

func (h *liveHist) snapshot() Histogram {
	var out Histogram
	for i := range h.buckets {
		out.Buckets[i] = h.buckets[i].Load()
	}
	out.Count = h.count.Load()
	out.Sum = time.Duration(h.sum.Load())
	return out
}

// Add adds o's samples to h.
func (h *Histogram) Add(o Histogram) {
	for i := range h.Buckets {
		h.Buckets[i] += o.Buckets[i]
	}
	h.Count += o.Count
	h.Sum += o.Sum
}

// Mean returns the mean latency, 0 without samples.
func (h *Histogram) Mean() time.Duration {
	if h.Count == 0 {
		return 0
	}
	return h.Sum / time.Duration(h.Count)
}

// Quantile returns an upper bound of the q-quantile (0 <= q <= 1): the upper edge of the bucket
// holding it, so the true value is at most this and more than half of it. 0 without samples.
func (h *Histogram) Quantile(q float64) time.Duration {
	var total uint64
	for _, c := range h.Buckets {
		total += c
	}
	if total == 0 {
		return 0
	}
	if q < 0 {
		q = 0
	}
	if q > 1 {
		q = 1
	}
	rank := uint64(q * float64(total))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.Buckets {
		seen += c
		if seen >= rank {
			return time.Duration(uint64(2) << uint(i))
		}
	}
	return time.Duration(uint64(2) << uint(histBuckets-1))
}

// String prints the non-empty buckets as "<=upper:count" pairs with the mean and p50/p99.
func (h *Histogram) String() string {
	if h.Count == 0 {
		return "no samples"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "n=%d mean=%v p50<=%v p99<=%v [", h.Count, h.Mean(), h.Quantile(0.5), h.Quantile(0.99))
	first := true
	for i, c := range h.Buckets {
		if c == 0 {
			continue
		}
		if !first {
			b.WriteByte(' ')
		}
		first = false
		fmt.Fprintf(&b, "<%v:%d", time.Duration(uint64(2)<<uint(i)), c)
	}
	b.WriteByte(']')
	return b.String()
}
