package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Records: the ring as a queue of length-prefixed messages, zero-copy on both sides. The
// producer reserves a record, writes it in place and submits it; the consumer gets each record
// as one slice, wherever it lies in the ring (the mirror makes a record that runs past the end
// contiguous), and releases it. This is the shape of the kernel's BPF ring buffer
// (bpf_ringbuf_reserve / bpf_ringbuf_submit over data pages mapped twice) without its busy bit:
// with one producer, records are published in order by moving the head past them.
//
// Layout: each record is an 8-byte header (the payload length as a little-endian uint32, then
// four zero bytes) followed by the payload, padded to a multiple of 8 bytes, so every payload
// starts 8-byte aligned. A ring carries records or a byte stream, not both.

// recordHeader is the size of the length prefix in front of every record.
const recordHeader = 8

// ErrCorrupt is returned by NextRecord and ReadRecords when the bytes at the consumer's
// position are not a record header this package wrote: the ring was used as a byte stream, or
// memory shared with another process was overwritten. It is also returned by every call that
// finds the other side's position in a shared ring's header impossible (see Attach), and by
// Attach for such a header.
var ErrCorrupt = errors.New("ring: corrupt record")

// recordSize is the room a record of n payload bytes takes in the ring.
func recordSize(n uint64) uint64 { return recordHeader + (n+7)&^7 }

// MaxRecord is the largest record payload the ring takes: half its capacity, so that a
// producer waiting for room for one record never waits for more than the consumer can free,
// and at most 4 GiB - 1, what the length prefix holds (on a ring of more than 8 GiB).
func (r *Ring) MaxRecord() int { return int(r.maxRecord()) }

func (r *Ring) maxRecord() uint64 { return min(r.n/2, math.MaxUint32) }

// Reserve reserves a record of n payload bytes and returns them, in place in the ring, for the
// producer to fill. The record reaches the consumer at the next Submit (or CloseWrite). Reserve
// may be called several times before one Submit: a batch of records is published with one
// store. A Reserve that must wait for room first submits the records reserved so far, so fill
// each record before the next Reserve. n may be up to MaxRecord. Producer only.
//
// The slice is valid until the record is submitted, and never after Close: a producer that
// may be closed from another goroutine must not write into it once Close may have run.
func (r *Ring) Reserve(n int) ([]byte, error) {
	if n < 0 || uint64(n) > r.maxRecord() {
		return nil, fmt.Errorf("%w: Reserve(%d) on a ring that takes records of up to %d bytes", ErrTooLarge, n, r.maxRecord())
	}
	// enter, not enterLight: Reserve writes the length into the ring's memory, which a Close
	// in another goroutine must not unmap meanwhile.
	if err := r.enter(&r.prod); err != nil {
		return nil, err
	}
	total := recordSize(uint64(n))
	p := &r.prod
	var rec []byte
	if total <= r.n-r.used(p.pos, p.peer) && r.h.state() == 0 {
		// The common case: room this side already knows of, without writeSlice's call.
		off := r.offset(p.pos)
		rec = r.buf[off : off+total : off+total]
	} else {
		var err error
		if rec, err = r.writeSlice(total); err != nil {
			r.exit(&r.prod)
			return nil, err
		}
	}
	binary.LittleEndian.PutUint64(rec, uint64(n))
	p.pos = r.advance(p.pos, total)
	p.lent = 0
	r.exit(&r.prod)
	return rec[recordHeader : recordHeader+n : recordHeader+n], nil
}

// Submit publishes every record reserved since the last Submit, waking the consumer if it
// waits for one. Producer only.
func (r *Ring) Submit() error { return r.flush() }

// flush publishes everything the producer wrote or reserved and has not published (Submit,
// Writer.Flush).
func (r *Ring) flush() error {
	if err := r.enterLight(&r.prod); err != nil {
		return err
	}
	if r.prod.pos != r.prod.pub {
		r.publish(&r.prod)
	}
	r.exitLight(&r.prod)
	return nil
}

// releaseLazily is how many released bytes the consumer keeps to itself before it publishes
// them: publishing is a store to a cache line the producer reads, so one per record would cost
// a cache-line transfer per record when the ring runs full. The consumer also publishes
// whenever it is about to wait, so a producer waiting for room is never left waiting for bytes
// already released.
func (r *Ring) releaseLazily() uint64 { return r.n / 8 }

// NextRecord returns the payload of the next record, in place in the ring, waiting for one. It
// releases the record returned by the previous NextRecord, so a record stays valid until the
// next call of NextRecord, ReadRecords or Release (and never after Close). It returns io.EOF
// once CloseWrite was called and every record was read. Consumer only.
func (r *Ring) NextRecord() ([]byte, error) {
	if err := r.enter(&r.cons); err != nil { // enter: it reads the length in the ring's memory
		return nil, err
	}
	c := &r.cons
	r.dropCurrent()
	s, err := r.readSlice(recordHeader)
	if err != nil {
		r.exit(&r.cons)
		return nil, err
	}
	rec, total, err := r.parseRecord(s)
	if err == nil {
		c.cur = total
	}
	r.exit(&r.cons)
	return rec, err
}

// dropCurrent releases the record last returned by NextRecord, publishing the released bytes
// once enough have gathered.
func (r *Ring) dropCurrent() {
	c := &r.cons
	if c.cur != 0 {
		c.pos = r.advance(c.pos, c.cur)
		c.cur = 0
		if r.used(c.pos, c.pub) >= r.releaseLazily() {
			r.publish(c)
		}
	}
}

// parseRecord reads the record at the start of s (the readable bytes from the consumer's
// position on) and returns its payload and the room it takes.
func (r *Ring) parseRecord(s []byte) ([]byte, uint64, error) {
	if len(s) < recordHeader {
		return nil, 0, r.corrupt(0, 0, len(s))
	}
	hdr := binary.LittleEndian.Uint64(s)
	n := hdr & 0xffffffff
	total := recordSize(n)
	if hdr>>32 != 0 || n > r.maxRecord() || total > uint64(len(s)) {
		return nil, 0, r.corrupt(hdr, 0, len(s))
	}
	return s[recordHeader : recordHeader+n : recordHeader+n], total, nil
}

// Release gives the record last returned by NextRecord back to the producer now, instead of at
// the next NextRecord. Consumer only.
func (r *Ring) Release() error {
	if err := r.enterLight(&r.cons); err != nil {
		return err
	}
	c := &r.cons
	c.pos = r.advance(c.pos, c.cur)
	c.cur = 0
	if c.pos != c.pub {
		r.publish(c)
	}
	r.exitLight(&r.cons)
	return nil
}

// ReadRecords waits for at least one record, then calls fn with the payload of every record
// available, in order and in place, and releases them all with one store. fn may stop the
// batch early by returning false; the records it was given are released either way. A payload
// is valid only during its call of fn. It returns how many records fn saw, and io.EOF once
// CloseWrite was called and every record was read. Consumer only.
func (r *Ring) ReadRecords(fn func(rec []byte) bool) (int, error) {
	if err := r.enter(&r.cons); err != nil { // enter: it reads lengths in the ring's memory
		return 0, err
	}
	c := &r.cons
	r.dropCurrent()
	c.peer = r.h.head.Load() // every record published so far
	s, err := r.readSlice(recordHeader)
	if err != nil {
		r.exit(&r.cons)
		return 0, err
	}
	// The walk is parseRecord written out, on a slice that shrinks record by record: one
	// length check per record, which also covers the loads and the slicing below.
	count, rest, limit := 0, s, r.maxRecord()
	lazily, unpublished := r.releaseLazily(), len(s)
	for len(rest) > 0 {
		if len(rest) < recordHeader {
			err = r.corrupt(0, uint64(unpublished-len(rest)), len(rest))
			break
		}
		hdr := binary.LittleEndian.Uint64(rest)
		n := hdr & 0xffffffff
		total := recordSize(n)
		if hdr>>32 != 0 || n > limit || total > uint64(len(rest)) {
			err = r.corrupt(hdr, uint64(unpublished-len(rest)), len(rest))
			break
		}
		rec := rest[recordHeader : recordHeader+n : recordHeader+n]
		rest = rest[total:]
		count++
		if !fn(rec) {
			break
		}
		if uint64(unpublished-len(rest)) >= lazily {
			// Give the producer the room read so far without waiting for the end of the
			// batch: a batch can be the whole ring, and a producer waiting for room would
			// otherwise idle until the consumer has read all of it, then the consumer until
			// the producer has filled it again.
			c.pos = r.advance(c.pos, uint64(unpublished-len(rest)))
			r.publish(c)
			unpublished = len(rest)
		}
	}
	c.pos = r.advance(c.pos, uint64(unpublished-len(rest)))
	r.publish(c)
	r.exit(&r.cons)
	return count, err
}

// corrupt is the error for a header hdr that is not a record's, at skip bytes past the
// consumer's position, with readable bytes from there on.
func (r *Ring) corrupt(hdr, skip uint64, readable int) error {
	return fmt.Errorf("%w: header %#016x at position %d with %d bytes readable", ErrCorrupt, hdr, r.advance(r.cons.pos, skip), readable)
}
