package mirror

import (
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
)

// BenchmarkRecordCost measures what recording a working set costs per fault: 4 KiB missing
// faults served from a file with the fault log off and on (VerifyFaults, one entry per fault,
// which Pair.WorkingSet reads), interleaved in every iteration, per handler. It reports the
// time per fault of each and the difference (log-ns/fault).
func BenchmarkRecordCost(b *testing.B) {
	const n = 8 << 20
	f, _ := patternFile(b, n)
	page := alloc.PageSize()
	handlers := []Handler{HandlerProcess}
	if fault.NativeAvailable {
		handlers = append(handlers, HandlerNative)
	}
	for _, h := range handlers {
		b.Run(h.String(), func(b *testing.B) {
			var off, on time.Duration
			for i := 0; i < b.N; i++ {
				for j := 0; j < 2; j++ {
					logged := (i+j)%2 == 1
					b.StopTimer()
					r, err := alloc.Shared(n)
					if err != nil {
						b.Fatal(err)
					}
					opts := []Option{ServeFaults(f), FaultAround(0), WithHandler(h), CloseRegion()}
					if logged {
						opts = append(opts, VerifyFaults(2*n/page))
					}
					p, err := Mirror(r, opts...)
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					t0 := time.Now()
					s := 0
					v := p.Original()
					for k := 0; k < n; k += page {
						s += int(v[k])
					}
					d := time.Since(t0)
					restoreSink.Add(int64(s))
					b.StopTimer()
					p.Close()
					if logged {
						on += d
					} else {
						off += d
					}
					b.StartTimer()
				}
			}
			faults := float64(b.N * n / page)
			b.ReportMetric(float64(off.Nanoseconds())/faults, "off-ns/fault")
			b.ReportMetric(float64(on.Nanoseconds())/faults, "on-ns/fault")
			b.ReportMetric(float64((on-off).Nanoseconds())/faults, "log-ns/fault")
		})
	}
}
