package mirror

import (
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

const ringSize = 1 << 20

// BenchmarkRing measures create + destroy of an adjacent 1 MiB ring: each backend through the
// library, and the same system calls written inline. Compare the ratios within one run.
func BenchmarkRing(b *testing.B) {
	n := uintptr(ringSize)
	b.Run("raw-duplicate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			base, err := mem.Reserve(2 * n)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := mem.Mmap(base, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED, -1, 0); err != nil {
				b.Fatal(err)
			}
			if _, err := mem.Mremap(base, 0, n, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, mem.Add(base, n)); err != nil {
				b.Fatal(err)
			}
			if err := mem.Munmap(base, 2*n); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("duplicate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := alloc.Shared(ringSize, alloc.WithRoom(ringSize))
			if err != nil {
				b.Fatal(err)
			}
			p, err := Mirror(r, Adjacent())
			if err != nil {
				b.Fatal(err)
			}
			p.Close()
			r.Close()
		}
	})
	b.Run("duplicate-owned", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := alloc.Shared(ringSize, alloc.WithRoom(ringSize))
			if err != nil {
				b.Fatal(err)
			}
			p, err := Mirror(r, Adjacent(), CloseRegion())
			if err != nil {
				b.Fatal(err)
			}
			p.Close()
		}
	})
	b.Run("raw-memfd", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			fd, err := unix.MemfdCreate("ring", unix.MFD_CLOEXEC)
			if err != nil {
				b.Fatal(err)
			}
			if err := unix.Ftruncate(fd, int64(n)); err != nil {
				b.Fatal(err)
			}
			base, err := mem.Reserve(2 * n)
			if err != nil {
				b.Fatal(err)
			}
			for _, at := range []uintptr{0, n} {
				if _, err := mem.Mmap(mem.Add(base, at), n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED, fd, 0); err != nil {
					b.Fatal(err)
				}
			}
			unix.Close(fd)
			if err := mem.Munmap(base, 2*n); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("memfd", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := alloc.Memfd("ring", ringSize, alloc.WithRoom(ringSize))
			if err != nil {
				b.Fatal(err)
			}
			p, err := Mirror(r, Adjacent(), WithBackend(BackendMemfd))
			if err != nil {
				b.Fatal(err)
			}
			p.Close()
			r.Close()
		}
	})
	b.Run("memfd-owned", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := alloc.Memfd("ring", ringSize, alloc.WithRoom(ringSize))
			if err != nil {
				b.Fatal(err)
			}
			p, err := Mirror(r, Adjacent(), WithBackend(BackendMemfd), CloseRegion())
			if err != nil {
				b.Fatal(err)
			}
			p.Close()
		}
	})
}
