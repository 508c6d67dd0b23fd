//go:build cgo

package fault

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/fault/cref"
	"github.com/mirrormem/mirrormem/uffd"
)

const benchLen = 8 << 20

// BenchmarkServe measures pages served per second: the first pass reads every page of the
// original (missing faults, filled from a file), the second every page of the mirror (minor
// faults), both from a C thread; handlers: the native C thread, the handler process, and the C
// reference (ref.c, reading the file with pread), side by side in one run. 4k: one page per
// fault; around: fault-around up to 64 pages. The -sealed kinds serve a memfd sealed against
// shrinking instead of the file: copied from a mapping of it, with no size check per fault.
func BenchmarkServe(b *testing.B) {
	f, data := sourceFile(b, benchLen)
	sealed := sealedMemfd(b, data)
	for _, around := range []int{1, 64} {
		name := "4k"
		if around > 1 {
			name = "around"
		}
		for _, kind := range []string{"cref", "native", "native-nospin", "native-sealed", "process", "process-nospin", "process-sealed"} {
			b.Run(name+"/"+kind, func(b *testing.B) {
				var missing, minor time.Duration
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					p := newTestPair(b, benchLen, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
					cfg := Config{UFFD: p.u, Views: p.views(), Len: benchLen, Source: SourceFD, SourceFD: int(f.Fd()),
						SourceLen: benchLen, AliasFD: -1, MaxAround: around}
					var h *Handler
					var err error
					cfg.NoSpin = strings.HasSuffix(kind, "-nospin")
					if strings.HasSuffix(kind, "-sealed") {
						cfg.SourceFD = sealed
					}
					switch strings.TrimSuffix(strings.TrimSuffix(kind, "-nospin"), "-sealed") {
					case "native":
						h, err = StartNative(cfg)
					case "process":
						h, err = StartProcess(cfg, ProcessOptions{NoStandby: true})
					}
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if kind == "cref" {
						m, n, err := cref.ServeTouch(p.u.Fd(), addrOf(p.orig), addrOf(p.dup), benchLen, int(f.Fd()), around, 0, false)
						if err != nil {
							b.Fatal(err)
						}
						missing += m
						minor += n
					} else {
						t0 := time.Now()
						cref.Touch(addrOf(p.orig), benchLen)
						t1 := time.Now()
						cref.Touch(addrOf(p.dup), benchLen)
						missing += t1.Sub(t0)
						minor += time.Since(t1)
					}
					b.StopTimer()
					if h != nil {
						h.Stop()
					}
					p.close()
					b.StartTimer()
				}
				pages := float64(b.N) * benchLen / pg
				b.ReportMetric(pages/missing.Seconds(), "missing-pages/s")
				b.ReportMetric(pages/minor.Seconds(), "minor-pages/s")
				b.SetBytes(2 * benchLen)
			})
		}
	}
}

// sealedMemfd returns a memfd holding data, sealed against shrinking.
func sealedMemfd(tb testing.TB, data []byte) int {
	fd, err := unix.MemfdCreate("bench-source", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Pwrite(fd, data, 0); err != nil {
		tb.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		tb.Fatal(err)
	}
	return fd
}
