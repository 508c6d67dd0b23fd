//go:build cgo

package mirror

import (
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/uffd"
)

const benchFaultLen = 8 << 20

// BenchmarkServeFaults measures pages served per second through the public API on both views
// (first every page of the original: missing faults filled from a file; then every page of the
// mirror: minor faults), one page per fault (4k) and with the default fault-around (around),
// for the native C-thread handler, the handler process and a plain C reference handler
// (internal/fault's ref.c) on the same kind of pair: "c" copies from a read-only mapping of the
// file as the native handler does (the same work), "c-pread" reads the file with pread first
// (what most C handlers do). All are interleaved in every iteration so that the ratios compare
// runs made side by side. The pages are read from C in all of them.
func BenchmarkServeFaults(b *testing.B) {
	f, _ := patternFile(b, benchFaultLen)
	page := alloc.PageSize()
	for _, around := range []int{0, DefaultFaultAround} {
		name := "4k"
		if around > 0 {
			name = "around"
		}
		b.Run(name, func(b *testing.B) {
			kinds := []string{"c", "native", "process", "c-pread"}
			var missing, minor [4]time.Duration
			for i := 0; i < b.N; i++ {
				for j := range kinds {
					k := (i + j) % len(kinds) // rotate the order
					b.StopTimer()
					r, err := alloc.Shared(benchFaultLen)
					if err != nil {
						b.Fatal(err)
					}
					var p *Pair
					var u *uffd.UFFD
					switch kinds[k] {
					case "c", "c-pread":
						p, err = Mirror(r)
						if err == nil {
							u, err = uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem | uffd.FeatureMinorShmem))
						}
						for _, v := range [][]byte{p.Original(), p.Mirror()} {
							if err == nil {
								err = u.Register(addr(v), benchFaultLen, uffd.ModeMissing|uffd.ModeMinor)
							}
						}
					case "native":
						p, err = Mirror(r, ServeFaults(f), FaultAround(around), WithHandler(HandlerNative))
					case "process":
						p, err = Mirror(r, ServeFaults(f), FaultAround(around), WithHandler(HandlerProcess))
					}
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if u != nil {
						m, n, err := fault.ReferenceServeTouch(u.Fd(), addr(p.Original()), addr(p.Mirror()), benchFaultLen, int(f.Fd()), max(around/page, 1), 0, kinds[k] == "c")
						if err != nil {
							b.Fatal(err)
						}
						missing[k] += m
						minor[k] += n
					} else {
						t0 := time.Now()
						fault.TouchC(addr(p.Original()), benchFaultLen)
						t1 := time.Now()
						fault.TouchC(addr(p.Mirror()), benchFaultLen)
						missing[k] += t1.Sub(t0)
						minor[k] += time.Since(t1)
					}
					b.StopTimer()
					if u != nil {
						u.Close()
					}
					p.Close()
					r.Close()
					b.StartTimer()
				}
			}
			pages := float64(b.N) * float64(benchFaultLen/page)
			for k, kind := range kinds {
				b.ReportMetric(pages/missing[k].Seconds(), kind+"-missing-pages/s")
				b.ReportMetric(pages/minor[k].Seconds(), kind+"-minor-pages/s")
			}
			b.ReportMetric(float64(missing[1])/float64(missing[0]), "native/c-missing-time")
			b.ReportMetric(float64(minor[1])/float64(minor[0]), "native/c-minor-time")
			b.ReportMetric(float64(missing[2])/float64(missing[0]), "process/c-missing-time")
		})
	}
}
