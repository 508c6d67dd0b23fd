package httpsrc

import (
	"fmt"
	"testing"
)

// BenchmarkReadAt reads page-aligned 4 KiB pages and 2 MiB fault-around windows from a local
// server, one reader at a time and from parallel readers.
func BenchmarkReadAt(b *testing.B) {
	const size = 64 << 20
	o := newObject(size, 99)
	srv := startServer(b, o.serveRange(false))
	s := open(b, srv, Config{})
	for _, n := range []int{4 << 10, 2 << 20} {
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			p := make([]byte, n)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			off := int64(0)
			for b.Loop() {
				if _, err := s.ReadAt(p, off); err != nil {
					b.Fatal(err)
				}
				off = (off + int64(n)) % size
			}
		})
		b.Run(fmt.Sprintf("%dKiB-parallel", n>>10), func(b *testing.B) {
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
