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
	for _, c := range []struct {
		name string
		once func(b *testing.B)
	}{
		{"raw-duplicate", func(b *testing.B) { rawRing(b, ringSize) }},
		{"duplicate", func(b *testing.B) { r, err := sharedRing(); libRing(b, r, err) }},
		{"duplicate-owned", func(b *testing.B) { r, err := sharedRing(); libRing(b, r, err, CloseRegion()) }},
		{"raw-memfd", func(b *testing.B) { rawMemfdRing(b, ringSize) }},
		{"memfd", func(b *testing.B) { r, err := memfdRing(); libRing(b, r, err, WithBackend(BackendMemfd)) }},
		{"memfd-owned", func(b *testing.B) {
			r, err := memfdRing()
			libRing(b, r, err, WithBackend(BackendMemfd), CloseRegion())
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.once(b)
			}
		})
	}
}

func sharedRing() (*alloc.Region, error) { return alloc.Shared(ringSize, alloc.WithRoom(ringSize)) }
func memfdRing() (*alloc.Region, error) {
	return alloc.Memfd("ring", ringSize, alloc.WithRoom(ringSize))
}

// libRing mirrors r (made with err) Adjacent with opts and closes both, failing b on an error.
func libRing(b *testing.B, r *alloc.Region, err error, opts ...Option) {
	if err != nil {
		b.Fatal(err)
	}
	p, err := Mirror(r, append(opts, Adjacent())...)
	if err != nil {
		b.Fatal(err)
	}
	p.Close()
	r.Close() // nil after CloseRegion
}

// rawRing makes and unmaps an adjacent ring of n bytes of shared memory with the system calls
// written inline (reserve, map, duplicate), as a C program would.
func rawRing(b *testing.B, n uintptr) {
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

// rawMemfdRing is rawRing with a memfd mapped twice instead of the duplicate.
func rawMemfdRing(b *testing.B, n uintptr) {
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
