//go:build cgo

package mirror

import (
	"slices"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/fault/cref"
	"github.com/mirrormem/mirrormem/uffd"
)

const benchFaultLen = 8 << 20

// BenchmarkServeFaults measures pages served per second through the public API on both views
// (first every page of the original: missing faults filled from a file; then every page of the
// mirror: minor faults), one page per fault (4k) and with the default fault-around (around),
// for the native C-thread handler, the handler process and a plain C reference handler
// (internal/fault/cref) on the same kind of pair: "c" copies from a read-only mapping of the
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
			var ratios [3][]float64 // per iteration: native/c missing, native/c minor, process/c missing
			var iter [4][2]time.Duration
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
						m, n, err := cref.ServeTouch(u.Fd(), addr(p.Original()), addr(p.Mirror()), benchFaultLen, int(f.Fd()), max(around/page, 1), 0, kinds[k] == "c")
						if err != nil {
							b.Fatal(err)
						}
						missing[k] += m
						minor[k] += n
						iter[k] = [2]time.Duration{m, n}
					} else {
						t0 := time.Now()
						cref.Touch(addr(p.Original()), benchFaultLen)
						t1 := time.Now()
						cref.Touch(addr(p.Mirror()), benchFaultLen)
						iter[k] = [2]time.Duration{t1.Sub(t0), time.Since(t1)}
						missing[k] += iter[k][0]
						minor[k] += iter[k][1]
					}
					b.StopTimer()
					if u != nil {
						u.Close()
					}
					p.Close()
					r.Close()
					b.StartTimer()
				}
				ratios[0] = append(ratios[0], float64(iter[1][0])/float64(iter[0][0]))
				ratios[1] = append(ratios[1], float64(iter[1][1])/float64(iter[0][1]))
				ratios[2] = append(ratios[2], float64(iter[2][0])/float64(iter[0][0]))
			}
			pages := float64(b.N) * float64(benchFaultLen/page)
			for k, kind := range kinds {
				b.ReportMetric(pages/missing[k].Seconds(), kind+"-missing-pages/s")
				b.ReportMetric(pages/minor[k].Seconds(), kind+"-minor-pages/s")
			}
			// Medians of the per-iteration ratios: a noisy neighbour spoils single iterations,
			// not the median.
			b.ReportMetric(median(ratios[0]), "native/c-missing-time")
			b.ReportMetric(median(ratios[1]), "native/c-minor-time")
			b.ReportMetric(median(ratios[2]), "process/c-missing-time")
		})
	}
}

func median(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	return s[len(s)/2]
}
