package main

import (
	"fmt"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// spscRing is the bench's own single-producer single-consumer byte ring, in two variants over
// the same code: on an adjacent mirror (a write or read across the end is one copy, the mirror
// makes the wrap disappear) or on a plain buffer (such a write or read is split into two copies).
// Waiting is spinning with runtime.Gosched, the same for both variants, so that the difference
// between them is the wrap alone.
type spscRing struct {
	head     atomic.Uint64 // bytes read, written by the consumer
	_        [56]byte
	tail     atomic.Uint64 // bytes written, written by the producer
	_        [56]byte
	headSeen uint64 // the producer's last look at head: reread only when the ring seems full
	_        [56]byte
	tailSeen uint64 // the consumer's last look at tail: reread only when the ring seems empty
	_        [56]byte
	buf      []byte // n bytes, or 2n (the mirror) when mirrored
	n        uint64
	mirrored bool
	unmap    func() error
	// straddled counts the writes and record reads that crossed the end of the buffer (the
	// same compare and increment in both variants): the wrap benchmarks check that every
	// message they time straddles.
	straddled int
}

// newSPSC makes a ring of n bytes, a multiple of the page size. Both variants live in shared
// anonymous memory, so they differ in the mirror only.
func newSPSC(n int, mirrored bool) (*spscRing, error) {
	r := &spscRing{n: uint64(n), mirrored: mirrored}
	if n%pageSize != 0 {
		return nil, fmt.Errorf("ring of %d bytes: not a multiple of the page size", n)
	}
	if !mirrored {
		a, err := sysMmap(0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS, -1)
		if err != nil {
			return nil, err
		}
		r.buf = bytesAt(a, n)
		r.unmap = func() error { return sysMunmap(a, n) }
		return r, nil
	}
	res, err := reserve(n)
	if err != nil {
		return nil, err
	}
	if _, err := sysMmap(res, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED, -1); err != nil {
		sysMunmap(res, 2*n)
		return nil, err
	}
	if _, _, e := unix.Syscall6(unix.SYS_MREMAP, res, 0, uintptr(n), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, res+uintptr(n), 0); e != 0 {
		sysMunmap(res, 2*n)
		return nil, e
	}
	r.buf = bytesAt(res, 2*n)
	r.unmap = func() error { return sysMunmap(res, 2*n) }
	return r, nil
}

func (r *spscRing) close() error { return r.unmap() }

// write copies p into the ring, waiting for room. len(p) must not exceed the capacity.
func (r *spscRing) write(p []byte) {
	m := uint64(len(p))
	t := r.tail.Load()
	for t-r.headSeen+m > r.n {
		if r.headSeen = r.head.Load(); t-r.headSeen+m > r.n {
			runtime.Gosched()
		}
	}
	off := t % r.n
	if off+m > r.n {
		r.straddled++
	}
	if r.mirrored || off+m <= r.n {
		copy(r.buf[off:off+m], p)
	} else {
		k := r.n - off
		copy(r.buf[off:], p[:k])
		copy(r.buf, p[k:])
	}
	r.tail.Store(t + m)
}

// read fills p from the ring, waiting for data.
func (r *spscRing) read(p []byte) {
	m := uint64(len(p))
	h := r.head.Load()
	for r.tailSeen-h < m {
		if r.tailSeen = r.tail.Load(); r.tailSeen-h < m {
			runtime.Gosched()
		}
	}
	off := h % r.n
	if r.mirrored || off+m <= r.n {
		copy(p, r.buf[off:off+m])
	} else {
		k := r.n - off
		copy(p[:k], r.buf[off:])
		copy(p[k:], r.buf[:m-k])
	}
	r.head.Store(h + m)
}

// skip moves both ends forward by k bytes without copying (the ring must be empty): the wrap
// benchmark uses it to put the next message across the end again.
func (r *spscRing) skip(k uint64) {
	r.tail.Add(k)
	r.head.Add(k)
	r.headSeen, r.tailSeen = r.head.Load(), r.tail.Load()
}

// readRecord returns the next m bytes as one slice, waiting for them: in place on the mirror;
// otherwise a record that crosses the end is first copied, in two pieces, into scratch.
// Release the bytes with consume.
func (r *spscRing) readRecord(m int, scratch []byte) []byte {
	mm := uint64(m)
	h := r.head.Load()
	for r.tailSeen-h < mm {
		if r.tailSeen = r.tail.Load(); r.tailSeen-h < mm {
			runtime.Gosched()
		}
	}
	off := h % r.n
	if off+mm > r.n {
		r.straddled++
	}
	if r.mirrored || off+mm <= r.n {
		return r.buf[off : off+mm]
	}
	k := r.n - off
	copy(scratch[:k], r.buf[off:])
	copy(scratch[k:m], r.buf[:mm-k])
	return scratch[:m]
}

// consume releases the m bytes of the last readRecord.
func (r *spscRing) consume(m int) { r.head.Add(uint64(m)) }

// fillLaps makes the bytes in the ring (written once, with write) readable again and again at
// the same places for the next laps laps, without writing them: the producer's position moves
// laps whole laps ahead at once (every byte of every lap is already in place, since a lap is
// the same memory). The consumer-side wrap benchmarks use it with releaseLap to read the same
// straddling record over and over while paying, per record, only what a real consumer pays.
func (r *spscRing) fillLaps(laps int) {
	r.tail.Add(uint64(laps) * r.n)
	r.tailSeen = r.tail.Load()
}

// releaseLap releases the record just read and moves the consumer on to the same place one
// lap later, in one atomic add: the one release store per record that a consumer makes (the
// same in both variants).
func (r *spscRing) releaseLap() { r.head.Add(r.n) }
