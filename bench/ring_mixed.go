package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math/rand/v2"
	"time"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
	"github.com/mirrormem/mirrormem/examples/ringbuffer/splitring"
)

// The mixed-size workload: frames of 64 B to 4 KiB drawn from a packet-size distribution
// (mixedSizes), each a 16-byte header (sequence number, kind, payload length), a payload and an
// 8-byte trailer (a hash of the payload, a magic word). The consumer decodes the header and
// the trailer in place, checks the sequence, the length and the magic, and hashes the payload
// (hash/maphash) against the trailer: what a consumer of a framed protocol does with every frame.
// Every transport carries the same frames; each consumer gets each frame whole its own way.

// mixedSizes is the frame-size mix, a packet-size distribution in the manner of IMIX: mostly
// minimum-size frames, a good share of mid-size and full Ethernet frames, a few 4 KiB ones.
var mixedSizes = []struct{ size, weight int }{{64, 50}, {576, 25}, {1500, 20}, {4096, 5}}

const (
	mixedMagic   = 0x6d697272
	mixedHeader  = 16
	mixedTrailer = 8
	rowMixRing   = "mirrored ring records: Reserve + Submit per 16 KiB, ReadRecords (decoded in place)"
	rowMixSplit  = "split-copy ring (splitring): length prefix + frame, Write + io.ReadFull (copied out)"
	rowMixPeek   = "split-copy ring (splitring): length prefix + frame, Peek + Discard (in place unless across the end)"
	rowMixPipe   = "bufio over io.Pipe: length prefix + frame, Peek + Discard (decoded in bufio's buffer)"
	rowMixChan   = "chan []byte (pooled buffers, decoded in place)"
	rowMixFloor  = "one goroutine, no transport: copy each frame into a buffer, decode and hash it there"
	// rowMixConsumer is the ceiling of every row in wall-clock time: see consumerFloor.
	rowMixConsumer = "the consumer's work alone: decode and hash frames already laid out in memory (no transport, no copy)"
)

// mixedSeed keys the payload hash: hash/maphash, the runtime's own hash (AES instructions on
// amd64), about as fast as a hash of every byte gets in Go, so that the transport, not the
// hash, decides the figure.
var mixedSeed = maphash.MakeSeed()

// mixedLoad is msgs frames cycling through a fixed set of prebuilt frames.
type mixedLoad struct {
	frames [][]byte // prebuilt frames; the producer copies frame i%len and stamps its sequence
	msgs   int
	bytes  int // frame bytes in one run
}

func newMixedLoad(msgs int) *mixedLoad {
	l := &mixedLoad{msgs: msgs}
	rng := rand.New(rand.NewPCG(7, 11))
	total := 0
	for _, s := range mixedSizes {
		total += s.weight
	}
	for range 1024 {
		pick, size := rng.IntN(total), 0
		for _, s := range mixedSizes {
			if pick -= s.weight; pick < 0 {
				size = s.size
				break
			}
		}
		f := make([]byte, size)
		plen := size - mixedHeader - mixedTrailer
		binary.LittleEndian.PutUint32(f[8:], uint32(size))
		binary.LittleEndian.PutUint32(f[12:], uint32(plen))
		for j := mixedHeader; j < mixedHeader+plen; j++ {
			f[j] = byte(rng.Uint32())
		}
		binary.LittleEndian.PutUint32(f[size-8:], uint32(maphash.Bytes(mixedSeed, f[mixedHeader:mixedHeader+plen])))
		binary.LittleEndian.PutUint32(f[size-4:], mixedMagic)
		l.frames = append(l.frames, f)
	}
	for i := range msgs {
		l.bytes += len(l.frames[i%len(l.frames)])
	}
	return l
}

// put copies frame i into dst (len(dst) == its size) and stamps its sequence number.
func (l *mixedLoad) put(i int, dst []byte) {
	copy(dst, l.frames[i%len(l.frames)])
	binary.LittleEndian.PutUint64(dst, uint64(i))
}

func (l *mixedLoad) size(i int) int { return len(l.frames[i%len(l.frames)]) }

// decode checks frame i in place: header, trailer, and the payload's CRC-32C.
func (l *mixedLoad) decode(i int, f []byte) error {
	le := binary.LittleEndian
	if len(f) < mixedHeader+mixedTrailer || le.Uint64(f) != uint64(i) || int(le.Uint32(f[8:])) != len(f) {
		return fmt.Errorf("frame %d: bad header (%d bytes)", i, len(f))
	}
	plen := int(le.Uint32(f[12:]))
	if plen != len(f)-mixedHeader-mixedTrailer || le.Uint32(f[len(f)-4:]) != mixedMagic ||
		uint32(maphash.Bytes(mixedSeed, f[mixedHeader:mixedHeader+plen])) != le.Uint32(f[len(f)-8:]) {
		return fmt.Errorf("frame %d of %d bytes: bad payload or trailer", i, len(f))
	}
	return nil
}

// run times produce (in this goroutine) against consume (in another); it returns GB/s of frames.
func (l *mixedLoad) run(produce func() error, consume func() error) (float64, error) {
	errc := make(chan error, 1)
	t0 := time.Now()
	go func() { errc <- consume() }()
	perr := produce()
	if err := errors.Join(perr, <-errc); err != nil {
		return 0, err
	}
	return float64(l.bytes) / time.Since(t0).Seconds() / 1e9, nil
}

func (l *mixedLoad) ring() (float64, error) {
	r, err := ring.New(streamRingCap)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	return l.run(func() error {
		pending := 0
		for i := range l.msgs {
			f, err := r.Reserve(l.size(i))
			if err != nil {
				return err
			}
			l.put(i, f)
			if pending += len(f) + 8; pending >= recSubmitEvery {
				r.Submit()
				pending = 0
			}
		}
		return r.Submit()
	}, func() error {
		i := 0
		var derr error
		for i < l.msgs && derr == nil {
			if _, err := r.ReadRecords(func(f []byte) bool {
				derr = l.decode(i, f)
				i++
				return derr == nil
			}); err != nil {
				return err
			}
		}
		return derr
	})
}

func (l *mixedLoad) split() (float64, error) {
	r := splitring.New(streamRingCap)
	defer r.Close()
	return l.run(func() error { return l.writeFramed(r) }, func() error {
		buf := make([]byte, 4096)
		for i := range l.msgs {
			if _, err := io.ReadFull(r, buf[:4]); err != nil {
				return err
			}
			n := int(binary.LittleEndian.Uint32(buf))
			if n > len(buf) {
				return fmt.Errorf("frame %d: length %d", i, n)
			}
			if _, err := io.ReadFull(r, buf[:n]); err != nil {
				return err
			}
			if err := l.decode(i, buf[:n]); err != nil {
				return err
			}
		}
		return nil
	})
}

// splitPeek is the split ring at its best: a frame is decoded in place unless it crosses the
// end of the buffer, where it is copied out first (what the mirror saves).
func (l *mixedLoad) splitPeek() (float64, error) {
	r := splitring.New(streamRingCap)
	defer r.Close()
	return l.run(func() error { return l.writeFramed(r) }, func() error {
		scratch := make([]byte, 4+4096)
		return l.readFramed(func(n int) ([]byte, error) { return r.Peek(n, scratch) }, func(n int) { r.Discard(n) })
	})
}

func (l *mixedLoad) pipe() (float64, error) {
	pr, pw := io.Pipe()
	defer pr.Close()
	bw := bufio.NewWriterSize(pw, 64<<10)
	br := bufio.NewReaderSize(pr, 64<<10)
	return l.run(func() error {
		if err := l.writeFramed(bw); err != nil {
			return err
		}
		return bw.Flush()
	}, func() error {
		return l.readFramed(br.Peek, func(n int) { br.Discard(n) })
	})
}

// writeFramed writes every frame to w behind a 4-byte length prefix: the producer of the rows
// without a record API.
func (l *mixedLoad) writeFramed(w io.Writer) error {
	buf := make([]byte, 4+4096)
	for i := range l.msgs {
		n := l.size(i)
		binary.LittleEndian.PutUint32(buf, uint32(n))
		l.put(i, buf[4:4+n])
		if _, err := w.Write(buf[:4+n]); err != nil {
			return err
		}
	}
	return nil
}

// readFramed decodes every frame written by writeFramed where peek shows it (peek(n) returns the
// next n bytes in one slice without consuming them), then discards it.
func (l *mixedLoad) readFramed(peek func(n int) ([]byte, error), discard func(n int)) error {
	for i := range l.msgs {
		h, err := peek(4)
		if err != nil {
			return err
		}
		n := int(binary.LittleEndian.Uint32(h))
		if n > 4096 {
			return fmt.Errorf("frame %d: length %d", i, n)
		}
		f, err := peek(4 + n)
		if err != nil {
			return err
		}
		if err := l.decode(i, f[4:]); err != nil {
			return err
		}
		discard(4 + n)
	}
	return nil
}

func (l *mixedLoad) channel() (float64, error) {
	const depth = 64
	free, full := make(chan []byte, depth), make(chan []byte, depth)
	for range depth {
		free <- make([]byte, 4096)
	}
	return l.run(func() error {
		for i := range l.msgs {
			b := (<-free)[:l.size(i)]
			l.put(i, b)
			full <- b
		}
		return nil
	}, func() error {
		for i := range l.msgs {
			b := <-full
			if err := l.decode(i, b); err != nil {
				return err
			}
			free <- b[:cap(b)]
		}
		return nil
	})
}

// ringMixed measures the mixed-size workload (suite "mixed").
func ringMixed(b *bencher, msgs, runs int) {
	l := newMixedLoad(msgs)
	c := caseSpec{suite: "mixed", name: "frames of 64 B to 4 KiB, decoded and hashed", unit: "GB/s", better: "higher", runs: runs,
		params: map[string]any{"frames": l.msgs, "frame_bytes_mean": l.bytes / l.msgs, "ring_bytes": streamRingCap, "sizes": fmt.Sprint(mixedSizes)}}
	tally := cpuTally{}
	ms := b.measure(c, tally.wrap([]row{
		{name: rowMixFloor, run: l.floor},
		{name: rowMixConsumer, run: l.consumerFloor},
		{name: rowMixRing, run: l.ring},
		{name: rowMixSplit, run: l.split},
		{name: rowMixPeek, run: l.splitPeek},
		{name: rowMixPipe, run: l.pipe},
		{name: rowMixChan, run: l.channel},
	}, l.msgs))
	b.rep.Measurements = append(b.rep.Measurements, tally.measurements("mixed-cpu", ms)...)
}

// floor is the work every row does, with no transport, on one goroutine: each frame copied
// into a buffer (the producer's one copy) and decoded and hashed there (the consumer's work).
// No row can spend less CPU time per frame than this, so it caps how much faster than another
// row any transport can be wherever CPU time decides (a machine whose other programs leave
// this one less than two CPUs): at most that row's CPU time over this floor's.
func (l *mixedLoad) floor() (float64, error) {
	buf := make([]byte, 4096)
	t0 := time.Now()
	for i := range l.msgs {
		f := buf[:l.size(i)]
		l.put(i, f)
		if err := l.decode(i, f); err != nil {
			return 0, err
		}
	}
	return float64(l.bytes) / time.Since(t0).Seconds() / 1e9, nil
}

// consumerFloor is the consumer's own work with nothing else: frames laid out back to back in a
// buffer the size of the ring (as the producer leaves them, already in this core's caches),
// each decoded and hashed where it lies. Whatever carries the frames, its consumer does at
// least this per frame, so no row moves frames faster than this one: divided by another row,
// it is the most any transport, the mirrored ring included, can gain over that row here.
func (l *mixedLoad) consumerFloor() (float64, error) {
	buf := make([]byte, streamRingCap)
	var offs []int
	for j, off := 0, 0; off+l.size(j) <= len(buf); j++ {
		l.put(j, buf[off:off+l.size(j)])
		offs = append(offs, off)
		off += l.size(j)
	}
	bytes := 0
	t0 := time.Now()
	for i := range l.msgs {
		j := i % len(offs)
		f := buf[offs[j] : offs[j]+l.size(j)]
		if err := l.decode(j, f); err != nil {
			return 0, err
		}
		bytes += len(f)
	}
	return float64(bytes) / time.Since(t0).Seconds() / 1e9, nil
}
