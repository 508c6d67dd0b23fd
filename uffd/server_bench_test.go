package uffd

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fastSource serves every offset from one prefilled buffer: the benchmarks measure the fault
// path, not a data source.
type fastSource struct{ data []byte }

func newFastSource(n int) fastSource {
	d := make([]byte, n)
	for i := range d {
		d[i] = byte(i/4096) + 1
	}
	return fastSource{d}
}

func (f fastSource) ReadAt(b []byte, off int64) (int, error) {
	n := 0
	for n < len(b) {
		o := int((off + int64(n)) % int64(len(f.data)))
		n += copy(b[n:], f.data[o:])
	}
	return n, nil
}

// BenchmarkServer serves a 256 MiB region (16 MiB with -short) touched once per iteration by a
// plain loop in the benchmark goroutine, one byte per page, sequentially or in a random order,
// and reports the cost per page. "4k" resolves exactly the faulting page; "around" uses the
// default fault-around. Between iterations the pages are dropped (MADV_REMOVE on shmem,
// MADV_DONTNEED on private anonymous memory) so every touch faults again.
func BenchmarkServer(b *testing.B) {
	size := 256 << 20
	if testing.Short() {
		size = 16 << 20
	}
	src := newFastSource(DefaultFaultAround)
	for _, kind := range []string{"shmem", "anon"} {
		for _, order := range []string{"seq", "random"} {
			for _, mode := range []struct {
				name string
				opts []ServerOption
			}{
				{"4k", []ServerOption{WithoutFaultAround()}},
				{"4k-2workers", []ServerOption{WithoutFaultAround(), WithWorkers(2)}},
				{"around", nil},
			} {
				if kind == "anon" && mode.name == "4k-2workers" {
					continue
				}
				b.Run(fmt.Sprintf("%s/%s/%s", kind, order, mode.name), func(b *testing.B) {
					benchServe(b, kind, order, size, src, mode.opts)
				})
			}
		}
	}
}

func benchServe(b *testing.B, kind, order string, size int, src fastSource, opts []ServerOption) {
	flags, drop := unix.MAP_SHARED|unix.MAP_ANONYMOUS, unix.MADV_REMOVE
	if kind == "anon" {
		flags, drop = unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, unix.MADV_DONTNEED
	}
	u := srvUFFD(b, FeatureMissingShmem)
	defer u.Close()
	a := srvMap(b, size, flags)
	defer srvUnmap(b, a, size)
	srvRegister(b, u, a, size, ModeMissing)
	s := NewServer(u, opts...)
	if err := s.Handle(a, size, src); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()

	pages := size / srvPage
	perm := make([]int32, pages)
	for i := range perm {
		perm[i] = int32(i)
	}
	if order == "random" {
		rand.New(rand.NewSource(1)).Shuffle(pages, func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
	}
	m := srvMem(a, size)
	sum := 0
	for _, p := range perm[:len(perm)/8] { // warm up: worker buffers, first faults
		sum += int(m[int(p)*srvPage])
	}
	warm := s.Stats()[0].Missing
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	var busy time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		srvMadvise(b, a, size, drop)
		b.StartTimer()
		t0 := time.Now()
		for _, p := range perm { // plain loop: this goroutine faults, the server resolves
			sum += int(m[int(p)*srvPage])
		}
		busy += time.Since(t0)
	}
	b.StopTimer()
	srvSink += sum
	touched := float64(b.N) * float64(pages)
	b.ReportMetric(float64(busy.Microseconds())/touched, "us/page")
	b.ReportMetric(touched/busy.Seconds(), "pages/s")
	s.Close()
	if err := <-errc; err != ErrServerClosed {
		b.Fatalf("Serve: %v", err)
	}
	st := s.Stats()[0]
	b.ReportMetric(float64(st.Missing-warm)/float64(b.N), "faults/op")
}

// BenchmarkServerViews serves two views of one shmem object (the second made with the mremap
// duplicate, both registered MISSING|MINOR) with HandleViews: every iteration frees the pages,
// touches every page through the first view (MISSING faults, COPY) and then through the second
// (MINOR faults, CONTINUE), and reports the cost per page of each pass.
func BenchmarkServerViews(b *testing.B) {
	size := 256 << 20
	if testing.Short() {
		size = 16 << 20
	}
	avail, err := Available()
	if err != nil {
		b.Fatal(err)
	}
	if avail&FeatureMinorShmem == 0 {
		b.Skip("kernel lacks UFFD_FEATURE_MINOR_SHMEM (5.14+)")
	}
	src := newFastSource(DefaultFaultAround)
	for _, mode := range []struct {
		name string
		opts []ServerOption
	}{{"4k", []ServerOption{WithoutFaultAround()}}, {"around", nil}} {
		b.Run(mode.name, func(b *testing.B) {
			u := srvUFFD(b, FeatureMissingShmem|FeatureMinorShmem)
			defer u.Close()
			a := srvShared(b, size)
			defer srvUnmap(b, a, size)
			d := srvDup(b, a, size)
			defer srvUnmap(b, d, size)
			srvRegister(b, u, a, size, ModeMissing|ModeMinor)
			srvRegister(b, u, d, size, ModeMissing|ModeMinor)
			s := NewServer(u, mode.opts...)
			if err := s.HandleViews(size, src, a, d); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- s.Serve(ctx) }()
			ma, md := srvMem(a, size), srvMem(d, size)
			pages := size / srvPage
			touch := func(m []byte) time.Duration {
				t0 := time.Now()
				sum := 0
				for p := 0; p < pages; p++ { // plain loop: this goroutine faults, the server resolves
					sum += int(m[p*srvPage])
				}
				srvSink += sum
				return time.Since(t0)
			}
			touch(ma) // warm up: the worker's buffers, the first faults
			touch(md)
			b.ReportAllocs()
			b.ResetTimer()
			var missing, minor time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				srvMadvise(b, a, size, unix.MADV_REMOVE)
				b.StartTimer()
				missing += touch(ma)
				minor += touch(md)
			}
			b.StopTimer()
			touched := float64(b.N) * float64(pages)
			b.ReportMetric(float64(missing.Nanoseconds())/1e3/touched, "missing-us/page")
			b.ReportMetric(float64(minor.Nanoseconds())/1e3/touched, "minor-us/page")
			s.Close()
			if err := <-errc; err != ErrServerClosed {
				b.Fatalf("Serve: %v", err)
			}
			st := s.Stats()
			if want := uint64(b.N+1) * uint64(size); st[0].Bytes != want || st[1].Bytes != want {
				b.Fatalf("bytes %d and %d, want %d each", st[0].Bytes, st[1].Bytes, want)
			}
		})
	}
}
