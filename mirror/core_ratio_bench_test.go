package mirror

import (
	"slices"
	"testing"
	"time"
)

// BenchmarkRingRatio interleaves, in every iteration, one create + destroy of an adjacent
// 1 MiB ring by each method, so that load from other processes hits all of them alike, and
// reports the medians of the per-iteration ratios: duplicate/raw (target <= 1.3), duplicate/memfd (target < 1), and the
// same for CloseRegion, where one munmap removes everything as in the raw calls.
func BenchmarkRingRatio(b *testing.B) {
	methods := []func(){
		func() { rawRing(b, ringSize) },
		func() { r, err := sharedRing(); libRing(b, r, err) },
		func() { r, err := sharedRing(); libRing(b, r, err, CloseRegion()) },
		func() { r, err := memfdRing(); libRing(b, r, err, WithBackend(BackendMemfd)) },
	}
	var samples [4][]time.Duration
	i := 0
	for b.Loop() {
		for k := range methods {
			m := (k + i) % len(methods) // rotate the order every iteration
			t0 := time.Now()
			methods[m]()
			samples[m] = append(samples[m], time.Since(t0))
		}
		i++
	}
	// Medians of per-iteration ratios: one preempted iteration does not skew them.
	ratio := func(a, c int) float64 {
		r := make([]float64, len(samples[a]))
		for j := range r {
			r[j] = float64(samples[a][j]) / float64(samples[c][j])
		}
		slices.Sort(r)
		return r[len(r)/2]
	}
	b.ReportMetric(ratio(1, 0), "dup/raw")
	b.ReportMetric(ratio(2, 0), "dup-owned/raw")
	b.ReportMetric(ratio(1, 3), "dup/memfd")
	rawSorted := slices.Clone(samples[0])
	slices.Sort(rawSorted)
	b.ReportMetric(float64(rawSorted[len(rawSorted)/2])/1e3, "raw-us")
}
