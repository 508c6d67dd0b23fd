package httpsrc

import (
	"fmt"
	"syscall"
	"testing"
	"time"
)

// BenchmarkReadAt reads page-aligned 4 KiB pages and 2 MiB fault-around windows from a local
// server, one reader at a time and from parallel readers, on the Source's own connections and
// (the -transport rows) through net/http's Transport, as HTTPS is read. cpu-µs/op is the CPU
// time of the whole process (the test server's included) per read.
func BenchmarkReadAt(b *testing.B) {
	const size = 64 << 20
	o := newObject(size, 99)
	srv := startServer(b, o.serveRange(false))
	direct := open(b, srv, Config{})
	transport := open(b, srv, Config{})
	transport.direct = nil
	for _, n := range []int{4 << 10, 2 << 20} {
		for _, s := range []*Source{direct, transport} {
			name := fmt.Sprintf("%dKiB", n>>10)
			if s.direct == nil {
				name += "-transport"
			}
			b.Run(name, func(b *testing.B) {
				p := make([]byte, n)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				off := int64(0)
				c0 := cpuTime()
				for b.Loop() {
					if _, err := s.ReadAt(p, off); err != nil {
						b.Fatal(err)
					}
					off = (off + int64(n)) % size
				}
				b.ReportMetric(float64(cpuTime()-c0)/1e3/float64(b.N), "cpu-µs/op")
			})
			b.Run(name+"-parallel", func(b *testing.B) {
				b.SetBytes(int64(n))
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					p := make([]byte, n)
					off := int64(0)
					for pb.Next() {
						if _, err := s.ReadAt(p, off); err != nil {
							b.Error(err)
							return
						}
						off = (off + int64(n)) % size
					}
				})
			})
		}
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
