package uffd

import "sync"

// bufPool hands out page-aligned buffers of at least one size, reused across workers and Serve calls so
// that serving allocates nothing once warm. A sync.Pool would box the slice on every Put and
// could drop a 2 MiB buffer at any collection; a free list under a mutex does neither.
type bufPool struct {
	mu   sync.Mutex
	size int
	free [][]byte
}

func newBufPool(size int) *bufPool { return &bufPool{size: size} }

// get returns a page-aligned buffer of p.size bytes or more, reused if one is free.
func (p *bufPool) get() []byte {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return b
	}
	p.mu.Unlock()
	return alignedBuf(p.size)
}

// put returns b to the pool: a worker's buffer of p.size bytes or more (it grew with the
// windows it served).
func (p *bufPool) put(b []byte) {
	if len(b) < p.size {
		return
	}
	p.mu.Lock()
	p.free = append(p.free, b)
	p.mu.Unlock()
}

// drain forgets the free buffers.
func (p *bufPool) drain() {
	p.mu.Lock()
	p.free = nil
	p.mu.Unlock()
}
