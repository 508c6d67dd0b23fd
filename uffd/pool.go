package uffd

import "sync"

// bufPool hands out page-aligned buffers of one size, reused across workers and Serve calls so
// that serving allocates nothing once warm. A sync.Pool would box the slice on every Put and
// could drop a 2 MiB buffer at any collection; a free list under a mutex does neither.
type bufPool struct {
	mu   sync.Mutex
	size int
	free [][]byte
}

func newBufPool(size int) *bufPool { return &bufPool{size: size} }

// get returns a buffer of p.size bytes, page aligned, reused if one is free.
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

// put returns b to the pool.
func (p *bufPool) put(b []byte) {
	if cap(b) < p.size {
		return
	}
	p.mu.Lock()
	p.free = append(p.free, b[:p.size])
	p.mu.Unlock()
}

// drain forgets the free buffers.
func (p *bufPool) drain() {
	p.mu.Lock()
	p.free = nil
	p.mu.Unlock()
}
