package main

import (
	"fmt"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// Library rows of the creation suite: one function per backend. The region is allocated with
// room for the mirror right after it and the pair owns it, the way a ring buffer uses the
// library: one create, one Close.

func libraryCreateRows(n int, target time.Duration) []row {
	return []row{
		{name: rowMirrorDup, run: calibrated(target, func(it int) (time.Duration, error) {
			return ringLib(n, it, mirror.BackendDuplicate, func() (*alloc.Region, error) {
				return alloc.Shared(n, alloc.WithRoom(n))
			})
		})},
		{name: rowMirrorMemfd, run: calibrated(target, func(it int) (time.Duration, error) {
			return ringLib(n, it, mirror.BackendMemfd, func() (*alloc.Region, error) {
				return alloc.Memfd("bench-ring", n, alloc.WithRoom(n))
			})
		})},
	}
}

func ringLib(n, iters int, backend mirror.Backend, region func() (*alloc.Region, error)) (time.Duration, error) {
	t0 := time.Now()
	for i := range iters {
		r, err := region()
		if err != nil {
			return 0, err
		}
		p, err := mirror.Mirror(r, mirror.Adjacent(), mirror.WithBackend(backend), mirror.CloseRegion())
		if err != nil {
			r.Close()
			return 0, err
		}
		if i == 0 {
			if got := p.Backend(); got != backend {
				p.Close()
				return 0, fmt.Errorf("asked for the %v backend, got %v", backend, got)
			}
			c := p.Contiguous()
			c[n-1] = 42
			if len(c) != 2*n || c[2*n-1] != 42 {
				p.Close()
				return 0, fmt.Errorf("ring of %d bytes: the second half does not show the first", n)
			}
		}
		if err := p.Close(); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}
