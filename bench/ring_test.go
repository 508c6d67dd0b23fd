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
				"copied out":      func() (float64, error) { return w.spsc(mirrored) },
				"parsed in place": func() (float64, error) { return w.spscParse(mirrored) },
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
