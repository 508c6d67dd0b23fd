package main

import (
	"bufio"
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sync"
	"time"
)

const (
	rowBenchMirrored = "bench ring, mirrored (raw mremap)"
	rowChan          = "chan []byte"
	rowBytesBuffer   = "bytes.Buffer + sync.Cond"
	rowPipeBufio     = "io.Pipe + bufio"
	streamRingCap    = 1<<20 + pageSize // not a power of two: large messages straddle the wrap now and then
	wrapRingCap      = 256 << 10
)

// streamLoad is one streaming workload: msgs messages of m bytes from a producer goroutine
// to a consumer goroutine. Messages differ in their first and last byte, which the consumer
// checks, so a torn or misplaced message is caught without slowing the copies down.
type streamLoad struct {
	m, msgs int
	src     [16][]byte
}

func newStreamLoad(m, msgs int) *streamLoad {
	l := &streamLoad{m: m, msgs: msgs}
	for i := range l.src {
		l.src[i] = make([]byte, m)
		for j := range l.src[i] {
			l.src[i][j] = byte(j * 7)
		}
		l.src[i][0], l.src[i][m-1] = byte(i), byte(i)^0xff
	}
	return l
}

func (l *streamLoad) check(i int, p []byte) error {
	if p[0] != byte(i%16) || p[l.m-1] != byte(i%16)^0xff {
		return fmt.Errorf("message %d of %d bytes arrived torn or out of order", i, l.m)
	}
	return nil
}

// run times a producer and a consumer; it returns GB/s.
func (l *streamLoad) run(produce func(i int, p []byte), consume func(i int, p []byte) error) (float64, error) {
	errc := make(chan error, 1)
	t0 := time.Now()
	go func() {
		buf := make([]byte, l.m)
		for i := range l.msgs {
			if err := consume(i, buf); err != nil {
				errc <- err
				return
			}
			if err := l.check(i, buf); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := range l.msgs {
		produce(i, l.src[i%16])
	}
	if err := <-errc; err != nil {
		return 0, err
	}
	return float64(l.m*l.msgs) / time.Since(t0).Seconds() / 1e9, nil
}

func (l *streamLoad) memcpy() (float64, error) {
	dst := make([]byte, 1<<20)
	t0 := time.Now()
	off := 0
	for i := range l.msgs {
		if off+l.m > len(dst) {
			off = 0
		}
		copy(dst[off:off+l.m], l.src[i%16])
		off += l.m
	}
	d := time.Since(t0)
	if err := l.check(l.msgs-1, dst[off-l.m:off]); err != nil {
		return 0, err
	}
	return float64(l.m*l.msgs) / d.Seconds() / 1e9, nil
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
	return d.Seconds() * 1e9 / float64(w.iters), w.verify()
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
	return d.Seconds() * 1e9 / float64(w.iters), w.checkSum(sum)
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
		rows := []row{{name: refMemcpy, run: l.memcpy}}
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
	}
	r := b.rep
	c64 := sizeName(64<<10) + " messages"
	r.addTarget("ring", "mirrored ring bandwidth, 64 KiB messages", r.find("ring", c64, rowMirring), r.find("ring", c64, refMemcpy), ">=", 0.8, refMemcpy)
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
		r.addTarget("wrap", fmt.Sprintf("mirror speed-up, %s record straddling the wrap, parsed in place (bench ring)", sizeName(m)),
			r.find("wrap", cp, rowSplit), r.find("wrap", cp, rowBenchMirrored), ">=", 1.5, rowSplit)
	}
}

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
