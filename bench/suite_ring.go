package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"runtime"
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
	rowCrossCore     = "bound: pinned threads, no ring, best of N laps"
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
	return l.runBoth(func() {
		for i := range l.msgs {
			produce(i, l.src[i%16])
		}
	}, consumeAll)
}

// runBoth times a producer that sends all l.msgs messages its own way against a consumer that
// takes and checks them; it returns GB/s.
func (l *streamLoad) runBoth(produceAll func(), consumeAll func() error) (float64, error) {
	errc := make(chan error, 1)
	t0 := time.Now()
	go func() { errc <- consumeAll() }()
	produceAll()
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
	gbs, _, err := crossCoreBound(boundLapSizes(l.m, streamRingCap), streamRingCap, func(buf []byte, lap int) (int, int, error) {
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
// and releases it. The producer's position is set whole laps ahead once (fillLaps), and each
// release moves the consumer on by a whole lap (releaseLap): the next record is the same bytes
// at the same place, still across the end, and the loop pays per record only what a consumer
// does (one look at the producer's position, the decode, one release store). Before, it also
// paid two more atomic adds per record to move both positions, which took a third of the
// time at 64 B and hid the reassembly the mirror saves. Returns ns per record.
func (w *wrapLoad) consumerSide(mirrored bool, dec decoder) (float64, error) {
	r, err := newSPSC(wrapRingCap, mirrored)
	if err != nil {
		return 0, err
	}
	defer r.close()
	r.skip(uint64(wrapRingCap - w.m/2))
	r.write(w.msg)
	r.fillLaps(w.iters)
	r.straddled = 0
	scratch := make([]byte, w.m)
	var acc uint64
	ns := fastestBatch(w.iters, func(k int) {
		for range k {
			acc += dec.decode(r.readRecord(w.m, scratch))
			r.releaseLap()
		}
	})
	if err := w.straddledAll(r, w.iters); err != nil {
		return 0, err
	}
	return ns, w.checkDecode(dec, acc)
}

// wrapBatches is how many batches the consumer-side wrap benchmarks split their iterations
// into; see fastestBatch.
const wrapBatches = 20

// fastestBatch runs do over iters iterations in wrapBatches batches and returns the ns per
// iteration of the fastest batch. The consumer-side wrap rows are a few nanoseconds per
// record on one core: a run of a few milliseconds that another program preempts once is
// several times slower, and on a loaded machine whole runs were (per-run ratios of 0.3x to
// 14x). Preemption only ever adds time, so the fastest batch is the figure, as the bound
// takes the fastest of its laps; every row of these cases is measured the same way.
func fastestBatch(iters int, do func(k int)) float64 {
	best := math.Inf(1)
	for b := range wrapBatches {
		k := iters/wrapBatches + btoi(b < iters%wrapBatches)
		if k == 0 {
			continue
		}
		t0 := time.Now()
		do(k)
		best = min(best, time.Since(t0).Seconds()*1e9/float64(k))
	}
	return best
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// decodeFloor is the decoder on the record in a plain slice: no ring, nothing to reassemble.
func (w *wrapLoad) decodeFloor(dec decoder) (float64, error) {
	var acc uint64
	ns := fastestBatch(w.iters, func(k int) {
		for range k {
			acc += dec.decode(w.msg)
		}
	})
	return ns, w.checkDecode(dec, acc)
}

func (w *wrapLoad) checkDecode(dec decoder, acc uint64) error {
	if want := dec.decode(w.msg) * uint64(w.iters); acc != want {
		return fmt.Errorf("record of %d bytes %s to %#x over %d records, want %#x", w.m, dec.name, acc, w.iters, want)
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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

// suiteRing measures the mirrored ring against what Go programs use instead, and against the
// bound of the machine: byte streams and records between goroutines, a mixed-size framed
// workload, streams and latency between processes, and single records across the wrap.
func suiteRing(b *bencher) {
	sizes := []int{64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10}
	recSizes := []int{64, 1 << 10, 4 << 10, 16 << 10, 64 << 10}
	wrapSizes := []int{64, 4 << 10, 64 << 10}
	bytesPerRun, maxMsgs, runs := 64<<20, 400_000, b.cfg.runsOr(5)
	mixedFrames, xprocBytes, latencyMsgs := 200_000, 64<<20, 3000
	if b.cfg.quick {
		sizes, recSizes = []int{64, 4 << 10, 64 << 10}, []int{64, 4 << 10}
		bytesPerRun, maxMsgs, runs = 16<<20, 50_000, b.cfg.runsOr(3)
		mixedFrames, xprocBytes, latencyMsgs = 30_000, 4<<20, 100
		boundMinLaps = 5
	}
	loadBefore := loadAverage()
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
		tally := cpuTally{}
		ms := b.measure(c, tally.wrap(rows, l.msgs, rowCrossCore))
		for _, gb := range ms {
			b.rep.Measurements = append(b.rep.Measurements, perMessage(gb, m))
		}
		b.rep.Measurements = append(b.rep.Measurements, tally.measurements("ring-cpu", ms)...)
	}
	ringRecords(b, recSizes, bytesPerRun, maxMsgs, runs)
	ringMixed(b, mixedFrames, runs)
	xm := 4 << 10
	xl := newStreamLoad(xm, xprocBytes/xm)
	c := caseSpec{suite: "xproc", name: sizeName(xm) + " messages between processes", unit: "GB/s", better: "higher", runs: runs,
		params: map[string]any{"message_bytes": xm, "messages": xl.msgs, "ring_bytes": streamRingCap}}
	var xrows []row
	for _, name := range []string{rowXRing, rowXSock, rowXSockBuf, rowXPipe, rowXVmsplice} {
		xrows = append(xrows, row{name: name, run: func() (float64, error) { return xl.xprocStream(name) }})
	}
	b.measure(c, xrows)
	ringLatency(b, latencyMsgs, runs)
	ringWrap(b, wrapSizes, bytesPerRun, runs)
	ringTargets(b.rep, sizes, recSizes, wrapSizes)
	b.rep.Notes = append(b.rep.Notes, ringBoundsNote(b.rep, sizes, recSizes)...)
	b.rep.Notes = append(b.rep.Notes, ringCPUNotes(b.rep, sizes)...)
	b.rep.Notes = append(b.rep.Notes, ringCeilingNotes(b.rep, sizes)...)
	b.rep.Notes = append(b.rep.Notes, ringWrapNotes(b.rep, wrapSizes)...)
	if before, after := loadBefore, loadAverage(); before != "" && after != "" {
		// Two goroutines that stream need two CPUs at once; the bound (best of many laps) does
		// not, so a loaded machine lowers the ring rows' ratios against it and widens spreads.
		b.rep.Notes = append(b.rep.Notes, fmt.Sprintf("Load average of the machine (/proc/loadavg, 1 minute) when the ring "+
			"suite started and ended: %s and %s, on %d CPUs. Above the CPU count, other programs took CPU time from the "+
			"streaming rows, which need two CPUs at once; the bound is the best of many laps and is hit far less.", before, after, runtime.NumCPU()))
	}
}

// loadAverage is the one-minute load average, or "" if it cannot be read.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// ringWrap measures single messages and records across the end of a ring: a message copied
// out (what the mirror does not change: both rings copy the same bytes), and the consumer
// alone decoding a record in place (what it does change: the split ring must reassemble).
func ringWrap(b *bencher, sizes []int, bytesPerRun, runs int) {
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
}

// ringTargets records the targets from this run's figures.
func ringTargets(r *Report, sizes, recSizes, wrapSizes []int) {
	for _, m := range sizes {
		c := sizeName(m) + " messages"
		r.addTarget("ring", fmt.Sprintf("stream of %s messages, buffered Writer + take-all ReadSlice vs io.Pipe + bufio", sizeName(m)),
			r.find("ring", c, rowRingFast), r.find("ring", c, rowPipeBufio), ">=", 2, rowPipeBufio)
		r.addTarget("ring", fmt.Sprintf("stream of %s messages, buffered Writer + take-all ReadSlice vs bytes.Buffer + sync.Cond", sizeName(m)),
			r.find("ring", c, rowRingFast), r.find("ring", c, rowBytesBuffer), ">=", 1.5, rowBytesBuffer)
	}
	for _, m := range recSizes {
		c := sizeName(m) + " records"
		if m < 4<<10 {
			if m == 64 {
				r.addTarget("records", "64 B records per second, batched record calls vs the bound",
					r.find("records-msgs", c, rowRecBatch), r.find("records-msgs", c, rowRecBound), ">=", 0.5, rowRecBound)
			}
			continue
		}
		r.addTarget("records", fmt.Sprintf("%s records, bytes per second, batched record calls vs the bound", sizeName(m)),
			r.find("records", c, rowRecBatch), r.find("records", c, rowRecBound), ">=", 0.8, rowRecBound)
	}
	mc := "frames of 64 B to 4 KiB, decoded and hashed"
	r.addTarget("mixed", "mixed-size frames decoded in place vs the split-copy ring", r.find("mixed", mc, rowMixRing), r.find("mixed", mc, rowMixSplit), ">=", 1.5, rowMixSplit)
	r.addTarget("mixed", "mixed-size frames decoded in place vs bufio over io.Pipe", r.find("mixed", mc, rowMixRing), r.find("mixed", mc, rowMixPipe), ">=", 3, rowMixPipe)
	xc := sizeName(4<<10) + " messages between processes"
	r.addTarget("xproc", "4 KiB messages between processes vs a Unix socket pair", r.find("xproc", xc, rowXRing), r.find("xproc", xc, rowXSock), ">=", 3, rowXSock)
	r.addTarget("xproc", "64 B one-way latency between processes, 99th percentile, vs a Unix socket pair",
		r.find("latency", latencyCaseP99, rowLatRingXproc), r.find("latency", latencyCaseP99, rowLatSockXproc), "<=", 1, rowLatSockXproc)
	// What the mirror buys, like for like (the same ring code, mirrored or not): a record across
	// the end decoded where it lies instead of reassembled first. Copying a message out across the
	// end moves the same bytes with or without the mirror; it has no target.
	dec := decoders[1]
	for _, m := range wrapSizes {
		cd := fmt.Sprintf("%s record %s by the consumer, across the end", sizeName(m), dec.name)
		r.addTarget("wrap-consumer", fmt.Sprintf("mirror speed-up, consumer side, %s record straddling the wrap %s (bench ring)", sizeName(m), dec.name),
			r.find("wrap-consumer", cd, rowSplit), r.find("wrap-consumer", cd, rowBenchMirrored), ">=", 1.5, rowSplit)
	}
}

// ringBoundsNote says, from this run's figures, how the ring rows stand against the bound, and
// flags any row above it: a bound that a ring beats was measured wrongly.
func ringBoundsNote(r *Report, sizes, recSizes []int) []string {
	var notes, above []string
	check := func(suite, cas, bound string, rows ...string) {
		bm := r.find(suite, cas, bound)
		if !ok(bm) {
			return
		}
		for _, row := range rows {
			if m := r.find(suite, cas, row); ok(m) && m.Median > bm.Median {
				above = append(above, fmt.Sprintf("%s, %s: %s at %.2fx", suite, cas, row, ratioOfRuns(m, bm)))
			}
		}
	}
	var fast []string
	for _, m := range sizes {
		c := sizeName(m) + " messages"
		check("ring", c, rowCrossCore, rowRingFast, rowRingIO, rowSplitEx, rowChan, rowBytesBuffer, rowPipeBufio)
		if f, bd := r.find("ring", c, rowRingFast), r.find("ring", c, rowCrossCore); ok(f) && ok(bd) {
			fast = append(fast, fmt.Sprintf("%s %.2fx", sizeName(m), ratioOfRuns(f, bd)))
		}
	}
	for _, m := range recSizes {
		check("records", sizeName(m)+" records", rowRecBound, rowRecBatch, rowRecOne)
	}
	if len(fast) > 0 {
		notes = append(notes, "The bound (rows “"+rowCrossCore+"” and “"+rowRecBound+"”) is the same messages written and read by "+
			"pinned threads with no ring: the better of two cores taking turns on laps (streams: of 16 KiB, 64 KiB and the whole ring; "+
			"records: of one Submit's 16 KiB, so that the bound hands over between the cores as often as the batched row), and one "+
			"core doing a whole ring's producer lap then its consumer lap, each the fastest of many laps after warm-up laps, with "+
			"the clock's own cost taken off. The fastest stream row (buffered Writer + take-all ReadSlice) reached, of that bound: "+
			strings.Join(fast, ", ")+".")
	}
	mc := "frames of 64 B to 4 KiB, decoded and hashed"
	if ring, cp, pk, pipe := r.find("mixed", mc, rowMixRing), r.find("mixed", mc, rowMixSplit), r.find("mixed", mc, rowMixPeek), r.find("mixed", mc, rowMixPipe); ok(ring) && ok(cp) && ok(pk) && ok(pipe) {
		notes = append(notes, fmt.Sprintf("Mixed-size frames: the mirrored ring decoded %.2f GB/s, %.2fx the split ring read through "+
			"its copy-out API, %.2fx the same split ring decoding in place unless a frame crosses the end (what the mirror "+
			"saves there is the reassembly of the few frames that straddle), and %.2fx bufio over io.Pipe decoding in "+
			"bufio's buffer.", ring.Median, ratioOfRuns(ring, cp), ratioOfRuns(ring, pk), ratioOfRuns(ring, pipe)))
	}
	if len(above) > 0 {
		notes = append(notes, "Rows above the bound in this run, so the bound was measured wrongly for them: "+strings.Join(above, "; ")+".")
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
