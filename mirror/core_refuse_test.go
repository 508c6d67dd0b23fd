package mirror

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

// Every refusal returns its error and leaves the fds and mappings exactly as they were.
func TestRefusals(t *testing.T) {
	ps := alloc.PageSize()
	anon := func(t *testing.T, n, flags int) []byte {
		b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, flags|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Munmap(b) })
		return b
	}
	heap := make([]byte, 3*ps)
	heapPage := heap[ps-int(addr(heap)%uintptr(ps)):][:ps]

	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T) func() (*Pair, error)
		want    error
		mention string
	}{
		{"private anonymous", func(t *testing.T) func() (*Pair, error) {
			b := anon(t, ps, unix.MAP_PRIVATE)
			return func() (*Pair, error) { return Of(b) }
		}, ErrNotShared, "private anonymous"},
		{"Go heap", func(t *testing.T) func() (*Pair, error) { return func() (*Pair, error) { return Of(heapPage) } }, ErrNotShared, "Go heap"},
		{"Go heap unaligned", func(t *testing.T) func() (*Pair, error) { return func() (*Pair, error) { return Of(heap[1 : ps+1]) } }, ErrRange, "page size"},
		{"private file", func(t *testing.T) func() (*Pair, error) {
			f, err := os.CreateTemp(t.TempDir(), "private")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			f.Truncate(int64(ps))
			b, err := unix.Mmap(int(f.Fd()), 0, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Munmap(b) })
			return func() (*Pair, error) { return Of(b) }
		}, ErrNotShared, "private file mapping"},
		{"empty", func(t *testing.T) func() (*Pair, error) { return func() (*Pair, error) { return Of(nil) } }, ErrRange, "empty"},
		{"unaligned start", func(t *testing.T) func() (*Pair, error) {
			b := anon(t, 2*ps, unix.MAP_SHARED)
			return func() (*Pair, error) { return Of(b[8 : ps+8]) }
		}, ErrRange, "page size"},
		{"unaligned length", func(t *testing.T) func() (*Pair, error) {
			b := anon(t, 2*ps, unix.MAP_SHARED)
			return func() (*Pair, error) { return Of(b[:ps+1]) }
		}, ErrRange, "page size"},
		{"unmapped", func(t *testing.T) func() (*Pair, error) {
			p, err := mem.Reserve(uintptr(2 * ps))
			if err != nil {
				t.Fatal(err)
			}
			mem.Munmap(p, uintptr(2*ps))
			return func() (*Pair, error) { return Of(mem.Slice(p, 2*ps)) }
		}, ErrNotMapped, "no mapping"},
		{"partly unmapped", func(t *testing.T) func() (*Pair, error) {
			p, err := mem.Reserve(uintptr(3 * ps))
			if err != nil {
				t.Fatal(err)
			}
			mem.Munmap(mem.Add(p, uintptr(ps)), uintptr(2*ps))
			if _, err := mem.Mmap(p, uintptr(ps), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED, -1, 0); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { mem.Munmap(p, uintptr(ps)) })
			return func() (*Pair, error) { return Of(mem.Slice(p, 3*ps)) }
		}, ErrNotMapped, "not mapped"},
		{"two mappings", func(t *testing.T) func() (*Pair, error) {
			b := anon(t, 2*ps, unix.MAP_SHARED)
			if err := unix.Mprotect(b[ps:], unix.PROT_READ); err != nil {
				t.Fatal(err)
			}
			return func() (*Pair, error) { return Of(b) }
		}, ErrRange, "spans 2 mappings"},
		{"hugetlb", func(t *testing.T) func() (*Pair, error) {
			// MAP_NORESERVE: the mapping needs no reserved huge pages (none are touched).
			b, err := unix.Mmap(-1, 0, 2<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB|unix.MAP_NORESERVE)
			if err != nil {
				t.Skipf("kernel without hugetlb support (CONFIG_HUGETLBFS): %v", err)
			}
			t.Cleanup(func() { unix.Munmap(b) })
			return func() (*Pair, error) { return Of(b) }
		}, ErrUnsupported, "hugetlb"},
		{"memfd truncated under the region", func(t *testing.T) func() (*Pair, error) {
			r := region(t, func() (*alloc.Region, error) { return alloc.Memfd("trunc", 2*ps) })
			if err := unix.Ftruncate(r.Fd(), int64(ps)); err != nil {
				t.Fatal(err)
			}
			return func() (*Pair, error) { return Mirror(r) }
		}, ErrPastObject, "SIGBUS"},
		{"Of a truncated memfd", func(t *testing.T) func() (*Pair, error) {
			r := region(t, func() (*alloc.Region, error) { return alloc.Memfd("trunc", 2*ps) })
			if err := unix.Ftruncate(r.Fd(), int64(ps)); err != nil {
				t.Fatal(err)
			}
			return func() (*Pair, error) { return Of(r.Bytes()) }
		}, ErrPastObject, "SIGBUS"},
		{"memfd backend without fd", func(t *testing.T) func() (*Pair, error) {
			r := region(t, func() (*alloc.Region, error) { return alloc.Shared(ps) })
			return func() (*Pair, error) { return Mirror(r, WithBackend(BackendMemfd), Adjacent()) }
		}, ErrUnsupported, "alloc.Memfd"},
		{"one view", func(t *testing.T) func() (*Pair, error) {
			r := region(t, func() (*alloc.Region, error) { return alloc.Shared(ps) })
			return func() (*Pair, error) { return Mirror(r, Views(1)) }
		}, ErrOption, "at least 2"},
		{"unknown backend", func(t *testing.T) func() (*Pair, error) {
			r := region(t, func() (*alloc.Region, error) { return alloc.Shared(ps) })
			return func() (*Pair, error) { return Mirror(r, WithBackend(7)) }
		}, ErrUnsupported, "unknown backend"},
		{"closed region", func(t *testing.T) func() (*Pair, error) {
			r := region(t, func() (*alloc.Region, error) { return alloc.Shared(ps) })
			r.Close()
			return func() (*Pair, error) { return Mirror(r) }
		}, ErrClosed, "closed"},
		{"nil region", func(t *testing.T) func() (*Pair, error) { return func() (*Pair, error) { return Mirror(nil) } }, ErrRange, "nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			call := tc.setup(t)
			done := unchanged(t)
			p, err := call()
			done()
			if err == nil {
				p.Close()
				t.Fatal("no error")
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("%v\nwant %v mentioning %q", err, tc.want, tc.mention)
			}
			var e *Error
			if !errors.As(err, &e) || !strings.HasPrefix(e.Op, "mirror.") {
				t.Fatalf("%T is not a *mirror.Error with the operation", err)
			}
		})
	}
}

func region(t *testing.T, mk func() (*alloc.Region, error)) *alloc.Region {
	t.Helper()
	r, err := mk()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}
