package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
)

const (
	rowBenchMirrored = "bench ring, mirrored (raw mremap)"
	rowChan          = "chan []byte"
	rowBytesBuffer   = "bytes.Buffer + sync.Cond"
	rowPipeBufio     = "io.Pipe + bufio"
	rowCrossCore     = "cross-core copy bound (two pinned threads, no ring)"
	// streamRingCap is the examples ring's default size plus a page: it stays in the level-2
	// cache of each core next to the producer's sources and the consumer's buffer (see
	// ring.DefaultSize), and is not a power of two, so large messages straddle the wrap now and then.
	streamRingCap = ring.DefaultSize + pageSize
	wrapRingCap   = 256 << 10
)

// streamLoad is one streaming workload: msgs messages of m bytes from a producer goroutine
// to a consumer goroutine. Messages differ in their first and last byte, which the consumer
// checks, so a torn or misplaced message is caught; the consumer also reads every byte in
// between (it looks for a byte value the messages never hold, at the speed of
// bytes.IndexByte), so every row moves every byte to the consumer's core, whether it hands the
// consumer a copy or the bytes in place.
type streamLoad struct {
	m, msgs int
	src     [16][]byte
}

func newStreamLoad(m, msgs int) *streamLoad {
	l := &streamLoad{m: m, msgs: msgs}
	for i := range l.src {
		l.src[i] = make([]byte, m)
		for j := range l.src[i] {
			l.src[i][j] = byte(j * 7 % 255) // never 0xff: see check
		}
		l.src[i][0], l.src[i][m-1] = byte(i), byte(i)^0xff
	}
	return l
}

func (l *streamLoad) check(i int, p []byte) error {
	if len(p) != l.m || p[0] != byte(i%16) || p[l.m-1] != byte(i%16)^0xff || hasFF(p[1:l.m-1]) {
		return fmt.Errorf("message %d of %d bytes arrived torn or out of order", i, l.m)
	}
	return nil
}

// hasFF reports whether b holds a byte 0xff, reading every byte: eight at a time in a plain
// loop for short slices (no call), with bytes.IndexByte's vector loop for long ones.
func hasFF(b []byte) bool {
	if len(b) >= 256 {
		return bytes.IndexByte(b, 0xff) >= 0
	}
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	var acc uint64
	for len(b) >= 8 {
		w := ^binary.LittleEndian.Uint64(b) // a 0xff byte of b is a zero byte of w
		acc |= (w - lo) &^ w & hi
		b = b[8:]
	}
	for _, c := range b {
		if c == 0xff {
			return true
		}
	}
	return acc != 0
}

// run times a producer and a consumer that copies each message out with consume; it returns GB/s.
func (l *streamLoad) run(produce func(i int, p []byte), consume func(i int, p []byte) error) (float64, error) {
	return l.runAll(produce, func() error {
		buf := make([]byte, l.m)
		for i := range l.msgs {
			if err := consume(i, buf); err != nil {
				return err
			}
			if err := l.check(i, buf); err != nil {
				return err
			}
		}
		return nil
	})
}

// runAll times a producer and a consumer that takes and checks all l.msgs messages its own
// way; it returns GB/s.
func (l *streamLoad) runAll(produce func(i int, p []byte), consumeAll func() error) (float64, error) {
	errc := make(chan error, 1)
	t0 := time.Now()
	go func() { errc <- consumeAll() }()
	for i := range l.msgs {
		produce(i, l.src[i%16])
	}
	if err := <-errc; err != nil {
		return 0, err
	}
	return float64(l.m*l.msgs) / time.Since(t0).Seconds() / 1e9, nil
}

// memcpy is the reference: the same messages copied once, on one core, into a buffer the size
// of the stream rings, at the places the ring would put them (in two pieces at the end of the
// buffer): the same bytes and the same working set as a ring's producer.
func (l *streamLoad) memcpy() (float64, error) {
	dst := make([]byte, streamRingCap)
	n := len(dst)
	t0 := time.Now()
	off := 0
	for i := range l.msgs {
		if off+l.m <= n {
			copy(dst[off:off+l.m], l.src[i%16])
		} else {
			k := copy(dst[off:], l.src[i%16])
			copy(dst, l.src[i%16][k:])
		}
		if off += l.m; off >= n { // m <= n: no division per message
			off -= n
		}
	}
	d := time.Since(t0)
	last := make([]byte, l.m)
	start := (off - l.m + n) % n
	k := copy(last, dst[start:min(start+l.m, n)])
	copy(last[k:], dst)
	if err := l.check(l.msgs-1, last); err != nil {
		return 0, err
	}
	return float64(l.m*l.msgs) / d.Seconds() / 1e9, nil
}

// crossCore is the bound (see crossCoreBound) for this stream: laps of back-to-back messages,
// copied in by the producer and checked in place by the consumer, as the fastest ring row does.
func (l *streamLoad) crossCore() (float64, error) {
	per := func(buf []byte) int { return len(buf) / l.m }
	gbs, _, err := crossCoreBound(boundLapSizes(l.m, streamRingCap), func(buf []byte, lap int) (int, int, error) {
		k := per(buf)
		for j := range k {
			copy(buf[j*l.m:(j+1)*l.m], l.src[(lap*k+j)%16])
		}
		return k * l.m, k, nil
	}, func(buf []byte, lap int) (int, int, error) {
		k := per(buf)
		for j := range k {
			if err := l.check(lap*k+j, buf[j*l.m:(j+1)*l.m]); err != nil {
				return 0, 0, err
			}
		}
		return 0, 0, nil
	})
	return gbs / 1e9, err
}

// pinThread binds the calling thread (locked by the caller) to one CPU.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("sched_setaffinity(CPU %d): %w", cpu, err)
	}
	return nil
}

func (l *streamLoad) spsc(mirrored bool) (float64, error) {
	r, err := newSPSC(streamRingCap, mirrored)
	if err != nil {
		return 0, err
	}
	defer r.close()
	return l.run(func(_ int, p []byte) { r.write(p) }, func(_ int, p []byte) error { r.read(p); return nil })
}

func (l *streamLoad) channel() (float64, error) {
	const depth = 64
	free, full := make(chan []byte, depth), make(chan []byte, depth)
	for range depth {
		free <- make([]byte, l.m)
	}
	return l.run(func(_ int, p []byte) {
		b := <-free
		copy(b, p)
		full <- b
	}, func(_ int, p []byte) error {
		b := <-full
		copy(p, b)
		free <- b
		return nil
	})
}

// bytesBuffer is a bytes.Buffer shared under a mutex, with a condition variable for "data
// arrived" and "room freed"; the buffer is bounded to the same capacity as the rings.
func (l *streamLoad) bytesBuffer() (float64, error) {
	var (
		mu   sync.Mutex
		cond = sync.NewCond(&mu)
		buf  bytes.Buffer
	)
	buf.Grow(streamRingCap)
	return l.run(func(_ int, p []byte) {
		mu.Lock()
		for buf.Len()+len(p) > streamRingCap {
			cond.Wait()
		}
		buf.Write(p)
		cond.Broadcast()
		mu.Unlock()
	}, func(_ int, p []byte) error {
		mu.Lock()
		for buf.Len() < len(p) {
			cond.Wait()
		}
		buf.Read(p)
		cond.Broadcast()
		mu.Unlock()
		return nil
	})
}

func (l *streamLoad) pipe() (float64, error) {
	pr, pw := io.Pipe()
	bw := bufio.NewWriterSize(pw, 64<<10)
	br := bufio.NewReaderSize(pr, 64<<10)
	defer pr.Close()
	return l.run(func(i int, p []byte) {
		bw.Write(p)
		if i == l.msgs-1 {
			bw.Flush()
		}
	}, func(_ int, p []byte) error {
		_, err := io.ReadFull(br, p)
		return err
	})
}

// wrapLoad times one message written and read back across the end of a ring: ns per message.
type wrapLoad struct {
	m, iters int
	msg, out []byte
}

func newWrapLoad(m, iters int) *wrapLoad {
	w := &wrapLoad{m: m, iters: iters, msg: make([]byte, m), out: make([]byte, m)}
	for i := range w.msg {
		w.msg[i] = byte(i*13 + 1)
	}
	return w
}

func (w *wrapLoad) verify() error {
	for i := range w.out {
		if w.out[i] != w.msg[i] {
			return fmt.Errorf("message of %d bytes read back wrong at byte %d", w.m, i)
		}
	}
	return nil
}

func (w *wrapLoad) spsc(mirrored bool) (float64, error) {
	r, err := newSPSC(wrapRingCap, mirrored)
	if err != nil {
		return 0, err
	}
	defer r.close()
	r.skip(uint64(wrapRingCap - w.m/2)) // the next message starts half its length before the end
	back := uint64(wrapRingCap - w.m)
	t0 := time.Now()
	for range w.iters {
		r.write(w.msg)
		r.read(w.out)
		r.skip(back) // and so does every following one
	}
	d := time.Since(t0)
	if err := w.straddledAll(r, w.iters); err != nil {
		return 0, err
	}
	return d.Seconds() * 1e9 / float64(w.iters), w.verify()
}

// straddledAll checks that every timed message crossed the end of the ring.
func (w *wrapLoad) straddledAll(r *spscRing, want int) error {
	if r.straddled != want {
		return fmt.Errorf("%d of %d accesses of a %d-byte message crossed the end of the ring, want all", r.straddled, want, w.m)
	}
	return nil
}

// spscParse is spsc with a consumer that parses each record in place (a CRC-32C over its
// bytes) instead of copying it out: what a mirror is for. Without the mirror a record across the
// end must be copied out first to be seen whole. Returns ns per record.
func (w *wrapLoad) spscParse(mirrored bool) (float64, error) {
	r, err := newSPSC(wrapRingCap, mirrored)
	if err != nil {
		return 0, err
	}
	defer r.close()
	r.skip(uint64(wrapRingCap - w.m/2))
	back := uint64(wrapRingCap - w.m)
	scratch := make([]byte, w.m)
	var sum uint32
	t0 := time.Now()
	for range w.iters {
		r.write(w.msg)
		sum = crc32.Checksum(r.readRecord(w.m, scratch), castagnoli)
		r.consume(w.m)
		r.skip(back)
	}
	d := time.Since(t0)
	if err := w.straddledAll(r, 2*w.iters); err != nil { // the write and the read
		return 0, err
	}
	return d.Seconds() * 1e9 / float64(w.iters), w.checkSum(sum)
}

// A decoder is what a consumer does with one record seen whole, in one slice.
type decoder struct {
	name   string // "hashed", ...: the case names say "record <name> by the consumer"
	floor  string // the row name of the decoder on a plain slice, no ring
	decode func([]byte) uint64
}

var decoders = []decoder{
	// Reads every byte: CRC-32C, the check a framed protocol runs over each record.
	{"hashed", "CRC-32C of a contiguous record (no ring)", func(b []byte) uint64 { return uint64(crc32.Checksum(b, castagnoli)) }},
	// Reads a header and a trailer and leaves the payload where it is, as a zero-copy
	// decoder (FlatBuffers, Cap'n Proto, a length-prefixed frame handed on as a slice) does.
	{"decoded in place (header and trailer fields)", "header and trailer of a contiguous record (no ring)", func(b []byte) uint64 {
		le := binary.LittleEndian
		return uint64(le.Uint32(b)) + uint64(le.Uint32(b[4:])) + le.Uint64(b[8:]) + le.Uint64(b[len(b)-8:])
	}},
}

// consumerSide times the consumer alone on a record that straddles the end of the ring: the
// producer's copy is done once, before the clock starts, as it is on the other core in a real
// stream. Per record the consumer takes it as one slice (in place on the mirror; on the split
// ring reassembled into a buffer with two copies, since a decoder needs it whole), decodes it
// and releases it; replay then puts the same bytes back in front of it, still across the end.
// Returns ns per record.
func (w *wrapLoad) consumerSide(mirrored bool, dec decoder) (float64, error) {
	r, err := newSPSC(wrapRingCap, mirrored)
	if err != nil {
		return 0, err
	}
	defer r.close()
	r.skip(uint64(wrapRingCap - w.m/2))
	r.write(w.msg)
	r.straddled = 0
	scratch := make([]byte, w.m)
	var acc uint64
	t0 := time.Now()
	for range w.iters {
		acc += dec.decode(r.readRecord(w.m, scratch))
		r.consume(w.m)
		r.replay(w.m)
	}
	d := time.Since(t0)
	if err := w.straddledAll(r, w.iters); err != nil {
		return 0, err
	}
	return d.Seconds() * 1e9 / float64(w.iters), w.checkDecode(dec, acc)
}

// decodeFloor is the decoder on the record in a plain slice: no ring, nothing to reassemble.
func (w *wrapLoad) decodeFloor(dec decoder) (float64, error) {
	var acc uint64
	t0 := time.Now()
	for range w.iters {
		acc += dec.decode(w.msg)
	}
	d := time.Since(t0)
	return d.Seconds() * 1e9 / float64(w.iters), w.checkDecode(dec, acc)
}

func (w *wrapLoad) checkDecode(dec decoder, acc uint64) error {
	if want := dec.decode(w.msg) * uint64(w.iters); acc != want {
		return fmt.Errorf("record of %d bytes %s to %#x over %d records, want %#x", w.m, dec.name, acc, w.iters, want)
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (w *wrapLoad) checkSum(sum uint32) error {
	if want := crc32.Checksum(w.msg, castagnoli); sum != want {
		return fmt.Errorf("record of %d bytes parsed with checksum %#x, want %#x", w.m, sum, want)
	}
	return nil
}

// parseFloor is a record copied in and checksummed, with no ring around it.
func (w *wrapLoad) parseFloor() (float64, error) {
	buf := make([]byte, w.m)
	var sum uint32
	t0 := time.Now()
	for range w.iters {
		copy(buf, w.msg)
		sum = crc32.Checksum(buf, castagnoli)
	}
	d := time.Since(t0)
	return d.Seconds() * 1e9 / float64(w.iters), w.checkSum(sum)
}

// memcpy is the two copies a ring does per message (in and out), with no ring around them.
func (w *wrapLoad) memcpy() (float64, error) {
	buf := make([]byte, w.m)
	t0 := time.Now()
	for range w.iters {
		copy(buf, w.msg)
		copy(w.out, buf)
	}
	d := time.Since(t0)
	return d.Seconds() * 1e9 / float64(w.iters), w.verify()
}

// suiteRing measures double-mapped buffers against the alternatives.
func suiteRing(b *bencher) {
	sizes := []int{64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10}
	bytesPerRun, maxMsgs, runs := 256<<20, 400_000, b.cfg.runsOr(5)
	if b.cfg.quick {
		sizes = []int{64, 4 << 10, 64 << 10}
		bytesPerRun, maxMsgs, runs = 16<<20, 50_000, b.cfg.runsOr(3)
	}
	for _, m := range sizes {
		l := newStreamLoad(m, min(maxMsgs, bytesPerRun/m))
		c := caseSpec{suite: "ring", name: sizeName(m) + " messages", unit: "GB/s", better: "higher", runs: runs,
			params: map[string]any{"message_bytes": m, "messages": l.msgs, "ring_bytes": streamRingCap}}
		rows := []row{{name: refMemcpy, run: l.memcpy}, {name: rowCrossCore, run: l.crossCore}}
		rows = append(rows, libraryRingStreamRows(l)...)
		rows = append(rows,
			row{name: rowChan, run: l.channel},
			row{name: rowBytesBuffer, run: l.bytesBuffer},
			row{name: rowPipeBufio, run: l.pipe},
		)
		for _, ms := range b.measure(c, rows) {
			b.rep.Measurements = append(b.rep.Measurements, perMessage(ms, m))
		}
	}
	for _, m := range sizes {
		w := newWrapLoad(m, min(200_000, bytesPerRun/4/m))
		c := caseSpec{suite: "wrap", name: sizeName(m) + " message across the end", unit: "ns/message", better: "lower", runs: runs,
			params: map[string]any{"message_bytes": m, "iterations": w.iters, "ring_bytes": wrapRingCap}}
		rows := []row{{name: refMemcpy + " (two copies, no ring)", run: w.memcpy}}
		rows = append(rows, libraryRingWrapRows(w)...)
		rows = append(rows,
			row{name: rowBenchMirrored, run: func() (float64, error) { return w.spsc(true) }},
			row{name: rowSplit, run: func() (float64, error) { return w.spsc(false) }},
		)
		b.measure(c, rows)

		c = caseSpec{suite: "wrap", name: sizeName(m) + " record parsed in place across the end", unit: "ns/record", better: "lower", runs: runs,
			params: map[string]any{"message_bytes": m, "iterations": w.iters, "ring_bytes": wrapRingCap, "consumer": "CRC-32C in place"}}
		rows = []row{{name: "copy + CRC-32C (no ring)", run: w.parseFloor}}
		rows = append(rows, libraryRingParseRows(w)...)
		rows = append(rows,
			row{name: rowBenchMirrored, run: func() (float64, error) { return w.spscParse(true) }},
			row{name: rowSplit, run: func() (float64, error) { return w.spscParse(false) }},
		)
		b.measure(c, rows)

		for _, dec := range decoders {
			c = caseSpec{suite: "wrap-consumer", name: fmt.Sprintf("%s record %s by the consumer, across the end", sizeName(m), dec.name),
				unit: "ns/record", better: "lower", runs: runs,
				params: map[string]any{"message_bytes": m, "iterations": w.iters, "ring_bytes": wrapRingCap, "decoder": dec.name}}
			b.measure(c, []row{
				{name: dec.floor, run: func() (float64, error) { return w.decodeFloor(dec) }},
				{name: rowBenchMirrored, run: func() (float64, error) { return w.consumerSide(true, dec) }},
				{name: rowSplit, run: func() (float64, error) { return w.consumerSide(false, dec) }},
			})
		}
	}
	r := b.rep
	c64 := sizeName(64<<10) + " messages"
	r.addTarget("ring", "mirrored ring bandwidth, 64 KiB messages", r.find("ring", c64, rowMirring), r.find("ring", c64, refMemcpy), ">=", 0.8, refMemcpy)
	r.addTarget("ring", "mirrored ring bandwidth, 64 KiB messages, against what two cores can move", r.find("ring", c64, rowMirring), r.find("ring", c64, rowCrossCore), ">=", 0.8, rowCrossCore)
	r.addTarget("ring", "mirrored ring bandwidth vs its split-copy twin, 64 KiB messages", r.find("ring", c64, rowMirring), r.find("ring", c64, rowSplitEx), ">=", 1.0, rowSplitEx)
	// Like for like: the same ring code, mirrored or not, so the ratio is what the mirror buys.
	for _, m := range []int{64, 4 << 10, 64 << 10} {
		if !slices.Contains(sizes, m) {
			continue
		}
		cw := sizeName(m) + " message across the end"
		r.addTarget("wrap", fmt.Sprintf("mirror speed-up, %s message straddling the wrap, copied out (bench ring)", sizeName(m)),
			r.find("wrap", cw, rowSplit), r.find("wrap", cw, rowBenchMirrored), ">=", 1.5, rowSplit)
		cp := sizeName(m) + " record parsed in place across the end"
		r.addTarget("wrap", fmt.Sprintf("mirror speed-up, %s record straddling the wrap, written then parsed in place (bench ring)", sizeName(m)),
			r.find("wrap", cp, rowSplit), r.find("wrap", cp, rowBenchMirrored), ">=", 1.5, rowSplit)
		for _, dec := range decoders {
			cd := fmt.Sprintf("%s record %s by the consumer, across the end", sizeName(m), dec.name)
			r.addTarget("wrap-consumer", fmt.Sprintf("mirror speed-up, consumer side, %s record straddling the wrap %s (bench ring)", sizeName(m), dec.name),
				r.find("wrap-consumer", cd, rowSplit), r.find("wrap-consumer", cd, rowBenchMirrored), ">=", 1.5, rowSplit)
		}
	}
	r.Notes = append(r.Notes, ringBoundsNote(r, sizes)...)
}

// ringBoundsNote says, from this run's figures, what bounds the double-mapped buffer targets.
// Every comparison in it is computed from the figures; none is a fixed conclusion.
func ringBoundsNote(r *Report, sizes []int) []string {
	var notes []string
	c64 := sizeName(64<<10) + " messages"
	if mc, xc, mr := r.find("ring", c64, refMemcpy), r.find("ring", c64, rowCrossCore), r.find("ring", c64, rowMirring); ok(mc) && ok(xc) && ok(mr) {
		need := 0.8 * mc.Median
		bound := fmt.Sprintf("%.1f GB/s, %.2fx more than two cores of this machine moved with no ring at all", need, need/xc.Median)
		if need <= xc.Median {
			bound = fmt.Sprintf("%.1f GB/s, %.2fx of what two cores of this machine moved with no ring at all", need, need/xc.Median)
		}
		ring := "below"
		if mr.Median > xc.Median {
			ring = "above"
		}
		notes = append(notes, fmt.Sprintf("Streams, 64 KiB messages: one core copies at %.1f GB/s (memcpy); two cores, one writing and "+
			"the other copying out what was just written, with no ring (row “%s”), moved %.1f GB/s (%.2fx memcpy). The mirrored ring "+
			"reached %.1f GB/s, %s that figure (%.2fx of it); 0.8x memcpy would need %s.",
			mc.Median, rowCrossCore, xc.Median, ratioOfRuns(xc, mc), mr.Median, ring, ratioOfRuns(mr, xc), bound))
	}
	var wrap []string
	for _, m := range []int{64, 4 << 10, 64 << 10} {
		cw := sizeName(m) + " message across the end"
		if sp, mi := r.find("wrap", cw, rowSplit), r.find("wrap", cw, rowBenchMirrored); ok(sp) && ok(mi) {
			saved := fmt.Sprintf("%.0f ns saved", sp.Median-mi.Median)
			if sp.Median < mi.Median {
				saved = fmt.Sprintf("%.0f ns lost", mi.Median-sp.Median)
			}
			wrap = append(wrap, fmt.Sprintf("%s: split %.0f ns, mirrored %.0f ns, %s, speed-up %.2fx",
				sizeName(m), sp.Median, mi.Median, saved, ratioOfRuns(sp, mi)))
		}
	}
	if len(wrap) > 0 {
		notes = append(notes, "Messages copied out across the wrap: the mirror saves the split ring's second copy call per side "+
			"(the split ring copies the same bytes in two pieces); in this run ("+strings.Join(wrap, "; ")+"). "+
			"The consumer-side cases measure the reassembly of a record that a consumer needs whole, with a decoder that reads "+
			"every byte (CRC-32C) and one that reads a header and a trailer in place.")
	}
	return notes
}

func ok(m *Measurement) bool { return m != nil && m.NotMeasured == "" && len(m.Runs) > 0 }

// perMessage derives the messages-per-second figures from a GB/s measurement of m-byte messages.
func perMessage(gb *Measurement, m int) *Measurement {
	mm := *gb
	mm.Suite = "ring-msgs"
	mm.Name = "ring-msgs/" + gb.Case + "/" + gb.Row
	mm.Unit = "M messages/s"
	mm.Runs = make([]float64, len(gb.Runs))
	for i, v := range gb.Runs {
		mm.Runs[i] = v * 1e9 / float64(m) / 1e6
	}
	mm.summarize()
	return &mm
}
