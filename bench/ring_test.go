package main

import (
	"fmt"
	"testing"
)

// BenchmarkRingStream runs the stream rows of the ring suite under go test, for profiling:
// go test ./bench -run '^$' -bench RingStream -cpuprofile cpu.out
func BenchmarkRingStream(b *testing.B) {
	for _, m := range []int{64, 4 << 10, 64 << 10} {
		l := newStreamLoad(m, max(1, (64<<20)/m))
		rows := []row{{name: "memcpy", run: l.memcpy}}
		rows = append(rows, libraryRingStreamRows(l)...)
		for _, r := range rows {
			b.Run(fmt.Sprintf("size=%d/%s", m, r.name), func(b *testing.B) {
				var gb float64
				for range b.N {
					v, err := r.run()
					if err != nil {
						b.Fatal(err)
					}
					gb += v
				}
				b.ReportMetric(gb/float64(b.N), "GB/s")
			})
		}
	}
}
