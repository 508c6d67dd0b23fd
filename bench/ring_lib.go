package main

import (
	"fmt"
	"io"
	"time"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
	"github.com/mirrormem/mirrormem/examples/ringbuffer/splitring"
)

// Library rows of the double-mapped buffer suite: the examples' mirrored ring (package ring, on
// an adjacent mirror) and its split-copy twin (package splitring: the same protocol on one
// plain buffer), both used through io.Writer and io.Reader.

const (
	rowSplitEx = "split-copy ring (examples/ringbuffer/splitring): Write + io.ReadFull"
	// The examples ring through each of its stream APIs; the row says which.
	rowRingIO   = "mirrored ring: Write + io.ReadFull (copy in, copy out)"
	rowRingFast = "mirrored ring: buffered Writer + ReadSlice (copy in, read in place)"
)

func libraryRingStreamRows(l *streamLoad) []row {
	return []row{
		{name: rowRingFast, run: func() (float64, error) {
			r, err := ring.New(streamRingCap)
			if err != nil {
				return 0, err
			}
			defer r.Close()
			w := ring.NewWriter(r, 0)
			return l.runAll(func(i int, p []byte) {
				w.Write(p)
				if i == l.msgs-1 {
					w.Flush()
				}
			}, func() error { return l.takeAll(r) })
		}},
		{name: rowRingIO, run: func() (float64, error) {
			r, err := ring.New(streamRingCap)
			if err != nil {
				return 0, err
			}
			defer r.Close()
			return l.run(func(_ int, p []byte) { r.Write(p) }, func(_ int, p []byte) error {
				_, err := io.ReadFull(r, p)
				return err
			})
		}},
		{name: rowSplitEx, run: func() (float64, error) {
			r := splitring.New(streamRingCap)
			defer r.Close()
			return l.run(func(_ int, p []byte) { r.Write(p) }, func(_ int, p []byte) error {
				_, err := io.ReadFull(r, p)
				return err
			})
		}},
	}
}

// takeAll is the take-everything consumer: one ReadSlice returns every readable byte (at least
// one whole message), each whole message in it is checked in place, and one Consume releases
// them all.
func (l *streamLoad) takeAll(r *ring.Ring) error {
	for i := 0; i < l.msgs; {
		s, err := r.ReadSliceAtLeast(l.m)
		if err != nil {
			return err
		}
		k := min(len(s)/l.m, l.msgs-i)
		for j := range k {
			if err := l.check(i+j, s[j*l.m:(j+1)*l.m]); err != nil {
				return err
			}
		}
		if err := r.Consume(k * l.m); err != nil {
			return err
		}
		i += k
	}
	return nil
}

// libraryRingWrapRows: the examples' ring repositioned before every message with its zero-copy
// calls (WriteSlice, Commit, ReadSliceAtLeast, Consume), whose cost is in the figure; the bench
// ring's repositioning is two atomic adds.
func libraryRingWrapRows(w *wrapLoad) []row {
	return []row{{name: rowMirring, note: func() string {
		return "includes four zero-copy calls per message that put the next message across the end again"
	}, run: func() (float64, error) {
		r, err := ring.New(wrapRingCap)
		if err != nil {
			return 0, err
		}
		defer r.Close()
		if r.Cap() != wrapRingCap {
			return 0, fmt.Errorf("ring of %d bytes has capacity %d", wrapRingCap, r.Cap())
		}
		skip := ringSkipper(r)
		if err := skip(wrapRingCap - w.m/2); err != nil {
			return 0, err
		}
		t0 := time.Now()
		for range w.iters {
			if _, err := r.Write(w.msg); err != nil {
				return 0, err
			}
			if _, err := io.ReadFull(r, w.out); err != nil {
				return 0, err
			}
			if err := skip(wrapRingCap - w.m); err != nil {
				return 0, err
			}
		}
		d := time.Since(t0)
		return d.Seconds() * 1e9 / float64(w.iters), w.verify()
	}}}
}

// ringSkipper moves both ends of r forward by k bytes through the zero-copy calls (nothing is
// copied), so that the next message starts where the benchmark wants it.
func ringSkipper(r *ring.Ring) func(k int) error {
	return func(k int) error {
		if _, err := r.WriteSlice(k); err != nil {
			return err
		}
		if err := r.Commit(k); err != nil {
			return err
		}
		if _, err := r.ReadSliceAtLeast(k); err != nil {
			return err
		}
		return r.Consume(k)
	}
}
