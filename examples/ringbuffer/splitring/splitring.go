// Package splitring is the conventional byte ring that package ring is measured against: one
// mapping of n bytes, so a write or read that crosses the end of the buffer is done in two
// copies, and a record that crosses it must be copied out to be seen whole.
//
// It is for benchmarks. It has the same single-producer, single-consumer protocol as package
// ring (atomic head and tail on separate cache lines, cached peer indices, channel wake-ups
// only when the other side sleeps), so a comparison measures the mirror and nothing else.
package splitring

import (
	"errors"
	"io"
	"sync/atomic"
)

// ErrClosed is returned by Write after Close or CloseWrite, and by Read after Close.
var ErrClosed = errors.New("splitring: closed")

const lineSize = 128

// Ring is a split-copy SPSC byte ring on a Go []byte.
type Ring struct {
	buf []byte
	n   uint64

	state    atomic.Uint32 // 1: closed, 2: write side closed
	readerCh chan struct{}
	writerCh chan struct{}
	_        [lineSize]byte
	head     atomic.Uint64 // bytes written, ever
	_        [lineSize - 8]byte
	tail     atomic.Uint64 // bytes read, ever
	_        [lineSize - 8]byte
	rWaiting atomic.Uint32
	_        [lineSize - 4]byte
	wWaiting atomic.Uint32
	_        [lineSize - 4]byte
	prodPeer uint64
	_        [lineSize - 8]byte
	consPeer uint64
	_        [lineSize - 8]byte
}

// New returns a ring of exactly size bytes (any size > 0).
func New(size int) *Ring {
	if size <= 0 {
		panic("splitring: size must be positive")
	}
	return &Ring{buf: make([]byte, size), n: uint64(size), readerCh: make(chan struct{}, 1), writerCh: make(chan struct{}, 1)}
}

// Cap returns the capacity in bytes.
func (r *Ring) Cap() int { return int(r.n) }

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Write copies all of p into the ring, in two pieces where it crosses the end, waiting for space.
func (r *Ring) Write(p []byte) (int, error) {
	head := r.head.Load()
	done := 0
	for done < len(p) {
		free := r.n - (head - r.prodPeer)
		for free == 0 {
			if r.state.Load() != 0 {
				return done, ErrClosed
			}
			r.prodPeer = r.tail.Load()
			if free = r.n - (head - r.prodPeer); free > 0 {
				break
			}
			r.wWaiting.Store(1)
			r.prodPeer = r.tail.Load()
			if free = r.n - (head - r.prodPeer); free > 0 || r.state.Load() != 0 {
				r.wWaiting.Store(0)
				continue
			}
			<-r.writerCh
			r.wWaiting.Store(0)
		}
		k := min(free, uint64(len(p)-done))
		off := head % r.n
		c := copy(r.buf[off:min(off+k, r.n)], p[done:])
		copy(r.buf, p[done+c:done+int(k)])
		head += k
		done += int(k)
		r.head.Store(head)
		if r.rWaiting.Load() != 0 && r.rWaiting.Swap(0) != 0 {
			wake(r.readerCh)
		}
	}
	return done, nil
}

// Read copies up to len(p) bytes out of the ring, in two pieces where they cross the end,
// waiting for at least one. It returns io.EOF after CloseWrite once the ring is drained.
func (r *Ring) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	tail := r.tail.Load()
	avail, err := r.waitReadable(tail, 1)
	if err != nil {
		return 0, err
	}
	k := min(avail, uint64(len(p)))
	off := tail % r.n
	c := copy(p[:k], r.buf[off:min(off+k, r.n)])
	copy(p[c:k], r.buf)
	r.release(tail + k)
	return int(k), nil
}

// waitReadable waits until at least need bytes are readable and returns how many are.
func (r *Ring) waitReadable(tail, need uint64) (uint64, error) {
	avail := r.consPeer - tail
	for avail < need {
		r.consPeer = r.head.Load()
		if avail = r.consPeer - tail; avail >= need {
			break
		}
		if st := r.state.Load(); st != 0 {
			if st&1 != 0 {
				return 0, ErrClosed
			}
			if r.consPeer = r.head.Load(); r.consPeer-tail < need {
				if r.consPeer == tail {
					return 0, io.EOF
				}
				return 0, io.ErrUnexpectedEOF
			}
			continue
		}
		r.rWaiting.Store(1)
		r.consPeer = r.head.Load()
		if avail = r.consPeer - tail; avail >= need || r.state.Load() != 0 {
			r.rWaiting.Store(0)
			continue
		}
		<-r.readerCh
		r.rWaiting.Store(0)
	}
	return avail, nil
}

func (r *Ring) release(tail uint64) {
	r.tail.Store(tail)
	if r.wWaiting.Load() != 0 && r.wWaiting.Swap(0) != 0 {
		wake(r.writerCh)
	}
}

// Peek returns the next n bytes (n at most the capacity) as one slice, waiting for them: in
// place when they lie in one piece, otherwise copied, in two pieces, into scratch (which must
// hold n bytes), the one copy a ring without a mirror cannot avoid. Release them with Discard.
func (r *Ring) Peek(n int, scratch []byte) ([]byte, error) {
	tail := r.tail.Load()
	if _, err := r.waitReadable(tail, uint64(n)); err != nil {
		return nil, err
	}
	off := tail % r.n
	if off+uint64(n) <= r.n {
		return r.buf[off : off+uint64(n)], nil
	}
	c := copy(scratch[:n], r.buf[off:])
	copy(scratch[c:n], r.buf)
	return scratch[:n], nil
}

// Discard releases the next n bytes, which a Peek returned.
func (r *Ring) Discard(n int) { r.release(r.tail.Load() + uint64(n)) }

// CloseWrite makes Read return io.EOF once the ring is drained.
func (r *Ring) CloseWrite() { r.state.Or(2); wake(r.readerCh) }

// Close wakes both sides with ErrClosed.
func (r *Ring) Close() { r.state.Or(1); wake(r.readerCh); wake(r.writerCh) }
