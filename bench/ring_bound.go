package main

import (
	"errors"
	"math"
	"runtime"
	"sync/atomic"
	"time"
)

// The cross-core bound: what two cores of this machine move with no ring and no
// synchronisation at all. A producer thread pinned to CPU 0 writes one lap of messages into a
// buffer, then a consumer thread pinned to CPU 1 reads that lap (doing exactly what the ring
// rows' consumers do with each message), then the producer writes the next lap over it, and so
// on: every byte the consumer reads was last written by the other core, and every line the
// producer writes was last read by the other core, which is the cache-to-cache traffic no ring
// can avoid. The two sides take turns, spinning on one atomic word, so neither core idles
// between laps, and each side's lap is timed on its own. The figure is lap bytes /
// max(fastest producer lap, fastest consumer lap): what a ring would reach with both sides
// perfectly overlapped and free synchronisation.
//
// For the figure to be a bound it must not be made slow by anything a ring does not pay for:
// - both threads are pinned, so neither migrates nor shares a CPU with the other;
// - a few laps of each size are run first, untimed (page faults, cache and TLB warm-up, CPU
//   frequency);
// - the fastest lap of many is kept (preemption by other programs only makes laps slower);
// - the cost of reading the clock, measured here, is taken off every lap;
// - laps of several sizes are timed and the fastest rate kept: a ring whose consumer runs right
//   behind its producer gets its lines from the producer's level-1 cache, which a lap of the
//   whole ring (level 2) would not show, so small laps are measured too;
// - laps of the whole ring are also run by one pinned thread, producer lap then consumer lap,
//   and the bound is the better of the two ways: the Go scheduler can run both goroutines on
//   one core, the consumer draining what the producer wrote until the ring was full, with the
//   lines still in that core's caches, and a ring that does so beats any figure that assumes
//   two cores. (One core cannot alternate on smaller laps: the producer runs until the ring
//   is full.)

// boundSide fills (producer) or reads (consumer) one lap in buf and returns, for the producer,
// the payload bytes and the messages of the lap.
type boundSide func(buf []byte, lap int) (bytes, msgs int, err error)

// boundLapSizes are the lap sizes tried: 16 KiB and 64 KiB (the ring's working set near its
// producer when the consumer keeps up) and the whole ring.
func boundLapSizes(msg, ring int) []int {
	var out []int
	for _, s := range []int{16 << 10, 64 << 10, ring} {
		s = max(s, msg)
		if len(out) == 0 || out[len(out)-1] != s {
			out = append(out, s)
		}
	}
	return out
}

// crossCoreBound returns the bound in bytes/s and messages/s: the best of two cores taking
// turns on laps of each of lapSizes and of one core running laps of ringSize (see
// sameCoreLaps).
func crossCoreBound(lapSizes []int, ringSize int, produce, consume boundSide) (bytesPerSec, msgsPerSec float64, err error) {
	if runtime.NumCPU() < 2 {
		return 0, 0, errors.New("needs two CPUs")
	}
	clock := clockCost()
	take := func(lap time.Duration, bytes, msgs int) error {
		if lap <= 0 {
			return errors.New("a lap took no measurable time")
		}
		bytesPerSec = max(bytesPerSec, float64(bytes)/lap.Seconds())
		msgsPerSec = max(msgsPerSec, float64(msgs)/lap.Seconds())
		return nil
	}
	for _, size := range lapSizes {
		bp, bc, bytes, msgs, err := boundLaps(make([]byte, size), produce, consume)
		if err == nil {
			err = take(max(bp, bc)-clock, bytes, msgs)
		}
		if err != nil {
			return 0, 0, err
		}
	}
	buf := make([]byte, ringSize)
	one, err := sameCoreLaps(buf, produce, consume)
	if err != nil {
		return 0, 0, err
	}
	bytes, msgs, err := produce(buf, 0) // what one lap of the ring holds
	if err == nil {
		err = take(one-2*clock, bytes, msgs)
	}
	return bytesPerSec, msgsPerSec, err
}

// sameCoreLaps is the fastest producer lap plus consumer lap run back to back by one thread
// pinned to CPU 0.
func sameCoreLaps(buf []byte, produce, consume boundSide) (time.Duration, error) {
	const warm = 3
	laps := warm + 1 // set from the first lap, as in boundLaps
	type result struct {
		best time.Duration
		err  error
	}
	out := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // ends locked: the pinned thread exits with the goroutine
		if err := pinThread(0); err != nil {
			out <- result{err: err}
			return
		}
		best := time.Duration(math.MaxInt64)
		for i := 0; i < laps; i++ {
			t0 := time.Now()
			_, _, err := produce(buf, i)
			if err == nil {
				_, _, err = consume(buf, i)
			}
			d := time.Since(t0)
			if err != nil {
				out <- result{err: err}
				return
			}
			if i >= warm {
				best = min(best, d)
			}
			if i == 0 {
				laps = warm + boundLapCount(d/2)
			}
		}
		out <- result{best: best}
	}()
	r := <-out
	return r.best, r.err
}

// boundMinLaps is the fewest laps timed per lap size: 20, or 5 in a quick run.
var boundMinLaps = 20

// boundLapCount is how many laps are timed after one lap of one side took lap: enough that
// the fastest is a steady-state lap (at least boundMinLaps), within about 10 ms per lap size,
// and never more than 400.
func boundLapCount(lap time.Duration) int {
	return max(boundMinLaps, min(400, int(10*time.Millisecond/max(lap, time.Nanosecond)/2)))
}

// clockCost is the least time between two readings of the clock.
func clockCost() time.Duration {
	best := time.Duration(math.MaxInt64)
	for range 200 {
		t0 := time.Now()
		best = min(best, time.Since(t0))
	}
	return best
}

// boundLaps runs warm-up laps and then timed ones on buf, and returns each side's fastest lap.
func boundLaps(buf []byte, produce, consume boundSide) (bestP, bestC time.Duration, bytes, msgs int, err error) {
	const warm = 3
	// The producer sets the number of laps after its first one, from how long it took, so
	// that a slow build (the race detector) does not take minutes; the consumer reads it.
	var laps atomic.Int32
	laps.Store(warm + 1)
	var turn atomic.Int32 // 0: the producer's lap, 1: the consumer's, -1: stop
	type result struct {
		best        time.Duration
		bytes, msgs int
		err         error
	}
	side := func(cpu int32, do boundSide, out chan<- result) {
		// The goroutine ends locked to its thread, so the pinned thread exits with it.
		runtime.LockOSThread()
		best := time.Duration(math.MaxInt64)
		if err := pinThread(int(cpu)); err != nil {
			turn.Store(-1)
			out <- result{err: err}
			return
		}
		var res result
		for i := 0; i < int(laps.Load()); i++ {
			for {
				t := turn.Load()
				if t == -1 {
					out <- result{err: errors.New("the other side stopped")}
					return
				}
				if t == cpu {
					break
				}
			}
			t0 := time.Now()
			b, m, err := do(buf, i)
			d := time.Since(t0)
			if i >= warm {
				best = min(best, d)
			}
			if err != nil {
				turn.Store(-1)
				out <- result{err: err}
				return
			}
			if i == 0 && cpu == 0 {
				laps.Store(int32(warm + boundLapCount(d)))
			}
			res.bytes, res.msgs = b, m
			turn.Store(1 - cpu)
		}
		res.best = best
		out <- res
	}
	prodc, consc := make(chan result, 1), make(chan result, 1)
	go side(0, produce, prodc)
	go side(1, consume, consc)
	p, c := <-prodc, <-consc
	if err := errors.Join(p.err, c.err); err != nil {
		return 0, 0, 0, 0, err
	}
	if p.msgs == 0 {
		return 0, 0, 0, 0, errors.New("a lap holds no message")
	}
	return p.best, c.best, p.bytes, p.msgs, nil
}
