//go:build cgo

package uffd

import (
	"context"
	"math/rand"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/loopholelabs/userfaultfd-go/pkg/mapper"
)

// BenchmarkServerVsPeer measures, side by side in every iteration (so that the noise of a
// shared machine hits all alike), the time per page of one goroutine touching a fresh private
// anonymous region (what the peer supports) served by loopholelabs/userfaultfd-go's
// mapper.Handle, by this server at 4 KiB per fault, and by this server with fault-around, in
// sequential and random order. It reports each as us/page and the ratios the project targets:
// peer/around on sequential access (throughput gain, target >= 3) and server/peer on random
// access (target <= 1).
func BenchmarkServerVsPeer(b *testing.B) {
	size := 256 << 20
	if testing.Short() {
		size = 16 << 20
	}
	pages := size / srvPage
	src := newFastSource(DefaultFaultAround)
	seqOrder := make([]int32, pages)
	for i := range seqOrder {
		seqOrder[i] = int32(i)
	}
	rndOrder := append([]int32(nil), seqOrder...)
	rand.New(rand.NewSource(1)).Shuffle(pages, func(i, j int) { rndOrder[i], rndOrder[j] = rndOrder[j], rndOrder[i] })

	type variant struct {
		name string
		run  func(order []int32) time.Duration
	}
	peer := func(order []int32) time.Duration {
		mem, fd, start, err := mapper.Register(size)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- mapper.Handle(fd, start, src) }()
		d := touchOrder(mem, order)
		syscall.Close(int(fd)) // Handle returns on the closed fd
		<-done
		syscall.Munmap(mem)
		return d
	}
	server := func(opts ...ServerOption) func([]int32) time.Duration {
		return func(order []int32) time.Duration {
			u, err := New()
			if err != nil {
				b.Fatal(err)
			}
			defer u.Close()
			mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
			if err != nil {
				b.Fatal(err)
			}
			defer syscall.Munmap(mem)
			a := srvAddrOfMem(mem)
			if err := u.Register(a, size, ModeMissing); err != nil {
				b.Fatal(err)
			}
			s := NewServer(u, opts...)
			if err := s.Handle(a, size, src); err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx) }()
			d := touchOrder(mem, order)
			s.Close()
			<-done
			return d
		}
	}
	variants := []variant{
		{"peer", peer},
		{"server-4k", server(WithoutFaultAround())},
		{"server-around", server()},
	}
	times := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		for _, o := range []struct {
			name  string
			order []int32
		}{{"seq", seqOrder}, {"random", rndOrder}} {
			for _, v := range variants {
				d := v.run(o.order)
				times[o.name+"/"+v.name] = append(times[o.name+"/"+v.name], float64(d.Nanoseconds())/1e3/float64(pages))
			}
		}
	}
	med := map[string]float64{}
	for k, v := range times {
		sort.Float64s(v)
		med[k] = v[len(v)/2]
		b.ReportMetric(med[k], k+"-us/page")
	}
	b.ReportMetric(med["seq/peer"]/med["seq/server-around"], "seq-peer/around")
	b.ReportMetric(med["seq/server-4k"]/med["seq/peer"], "seq-4k/peer")
	b.ReportMetric(med["random/server-around"]/med["random/peer"], "random-around/peer")
	b.ReportMetric(med["random/server-4k"]/med["random/peer"], "random-4k/peer")
}

// touchOrder reads one byte of every page listed with a plain loop and returns the time taken.
func touchOrder(mem []byte, order []int32) time.Duration {
	t0 := time.Now()
	s := 0
	for _, p := range order {
		s += int(mem[int(p)*srvPage])
	}
	d := time.Since(t0)
	srvSink += s
	return d
}
