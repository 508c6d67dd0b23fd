package main

import (
	"fmt"
	"runtime"
	"testing"
)

// BenchmarkRingStream runs the stream rows of the ring suite under go test, for profiling:
// go test ./bench -run '^$' -bench RingStream -cpuprofile cpu.out
func BenchmarkRingStream(b *testing.B) {
	for _, m := range []int{64, 4 << 10, 64 << 10} {
		l := newStreamLoad(m, max(1, (64<<20)/m))
		rows := []row{{name: "memcpy", run: l.memcpy}}
		rows = append(rows, libraryRingStreamRows(l)...)
		for _, r := range rows {
			b.Run(fmt.Sprintf("size=%d/%s", m, r.name), func(b *testing.B) {
				var gb float64
				for range b.N {
					v, err := r.run()
					if err != nil {
						b.Fatal(err)
					}
					gb += v
				}
				b.ReportMetric(gb/float64(b.N), "GB/s")
			})
		}
	}
}

// TestWrapCasesStraddle runs every wrap case of the ring suite on both variants of the bench
// ring: each must check out (data, checksums, decoded fields) and every timed message must
// have crossed the end of the ring, or the case reports an error instead of a figure.
func TestWrapCasesStraddle(t *testing.T) {
	for _, m := range []int{64, 4 << 10, 64 << 10} {
		w := newWrapLoad(m, 20)
		for _, mirrored := range []bool{true, false} {
			cases := map[string]func() (float64, error){
				"copied out": func() (float64, error) { return w.spsc(mirrored) },
			}
			for _, dec := range decoders {
				cases["consumer, "+dec.name] = func() (float64, error) { return w.consumerSide(mirrored, dec) }
			}
			for name, run := range cases {
				if ns, err := run(); err != nil || !(ns > 0) {
					t.Errorf("%d B, mirrored %v, %s: %v ns, %v", m, mirrored, name, ns, err)
				}
			}
		}
	}
}

// TestStraddleCheck: a ring whose timed accesses did not all cross the end is refused.
func TestStraddleCheck(t *testing.T) {
	w := newWrapLoad(64, 10)
	r, err := newSPSC(wrapRingCap, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	r.write(w.msg) // at offset 0: does not straddle
	if err := w.straddledAll(r, 1); err == nil {
		t.Error("a message at the start of the ring passed as straddling")
	}
	r.read(w.out)
	r.skip(uint64(wrapRingCap - w.m/2 - w.m)) // now half of it before the end
	r.write(w.msg)
	if err := w.straddledAll(r, 1); err != nil {
		t.Error(err)
	}
}

// TestStreamReferences: the memcpy reference copies the messages where a ring of the stream
// size would put them (it checks the last one), and the cross-core bound runs on two CPUs.
func TestStreamReferences(t *testing.T) {
	for _, m := range []int{64, 4 << 10, 64 << 10} {
		l := newStreamLoad(m, 3*streamRingCap/m+1) // a few laps, ending anywhere
		if v, err := l.memcpy(); err != nil || !(v > 0) {
			t.Errorf("memcpy, %d B: %v GB/s, %v", m, v, err)
		}
		v, err := l.crossCore()
		if runtime.NumCPU() < 2 {
			if err == nil {
				t.Errorf("cross-core bound on one CPU: %v GB/s, want an error", v)
			}
			continue
		}
		if err != nil || !(v > 0) {
			t.Errorf("cross-core bound, %d B: %v GB/s, %v", m, v, err)
		}
	}
}

// TestRingRowsCheckOut runs every row of the new ring cases once on small loads: each must
// deliver every message intact (the consumers check every byte) and give a positive figure.
func TestRingRowsCheckOut(t *testing.T) {
	l := newStreamLoad(4<<10, 300)
	mix := newMixedLoad(3000)
	rows := map[string]func() (float64, error){
		"records batched": func() (float64, error) { return l.records(true) },
		"records one":     func() (float64, error) { return l.records(false) },
		"mixed ring":      mix.ring, "mixed split": mix.split, "mixed split peek": mix.splitPeek,
		"mixed pipe": mix.pipe, "mixed chan": mix.channel,
	}
	for _, r := range libraryRingStreamRows(l) {
		rows["stream "+r.name] = r.run
	}
	for _, name := range []string{rowXRing, rowXSock, rowXSockBuf, rowXPipe, rowXVmsplice} {
		rows["xproc "+name] = func() (float64, error) { return l.xprocStream(name) }
	}
	for name, run := range rows {
		if v, err := run(); err != nil || !(v > 0) {
			t.Errorf("%s: %v, %v", name, v, err)
		}
	}
	for _, r := range latencyRows() {
		if p50, p99, err := r.run(50); err != nil || !(p50 > 0) || p99 < p50 {
			t.Errorf("%s: p50 %v, p99 %v, %v", r.name, p50, p99, err)
		}
	}
}

// TestChecksCatchDamage: the consumers' checks fail on a damaged message or frame, so a
// transport that delivered wrong bytes could not produce a figure.
func TestChecksCatchDamage(t *testing.T) {
	l := newStreamLoad(300, 1)
	msg := append([]byte(nil), l.src[0]...)
	if err := l.check(0, msg); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, 150, 298, 299} {
		bad := append([]byte(nil), msg...)
		bad[i] = 0xff
		if i == 0 || i == 299 {
			bad[i] ^= 0x0f
		}
		if l.check(0, bad) == nil {
			t.Errorf("message damaged at byte %d passed the check", i)
		}
	}
	if l.check(1, msg) == nil {
		t.Error("message 0 passed as message 1")
	}
	for _, n := range []int{0, 7, 8, 63, 64, 255, 256, 1000} {
		b := make([]byte, n)
		if hasFF(b) {
			t.Errorf("hasFF on %d zero bytes", n)
		}
		for i := range n {
			b[i] = 0xff
			if !hasFF(b) {
				t.Errorf("hasFF missed 0xff at byte %d of %d", i, n)
			}
			b[i] = 0xfe
		}
	}
	mix := newMixedLoad(1)
	f := make([]byte, mix.size(0))
	mix.put(0, f)
	if err := mix.decode(0, f); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 9, 13, mixedHeader, len(f) - mixedTrailer - 1, len(f) - 8, len(f) - 1} {
		bad := append([]byte(nil), f...)
		bad[i] ^= 1
		if mix.decode(0, bad) == nil {
			t.Errorf("frame damaged at byte %d of %d passed", i, len(f))
		}
	}
}
