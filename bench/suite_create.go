package main

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

const (
	rowMirrorDup   = "mirror (duplicate backend)"
	rowMirrorMemfd = "mirror (memfd backend)"
	rowShmOpen     = "shm_open double mmap (Go)"
	rowTmpfile     = "tmpfile double mmap (Go)"
	rowMemfdC      = "memfd double mmap (C)"
)

// calibrated turns "do iters create+destroy cycles" into one run's figure, microseconds per
// cycle, with the iteration count chosen on the first call so that one run lasts about target.
func calibrated(target time.Duration, f func(iters int) (time.Duration, error)) func() (float64, error) {
	iters := 0
	return func() (float64, error) {
		if iters == 0 {
			n := 1
			for {
				d, err := f(n)
				if err != nil {
					return 0, err
				}
				if d >= target/8 || n >= 1<<20 {
					iters = max(1, int(float64(n)*float64(target)/float64(max(d, time.Microsecond))))
					break
				}
				n *= 4
			}
		}
		d, err := f(iters)
		if err != nil {
			return 0, err
		}
		return d.Seconds() * 1e6 / float64(iters), nil
	}
}

func fromNS(f func(n, iters int) (int64, error), n int) func(int) (time.Duration, error) {
	return func(iters int) (time.Duration, error) {
		ns, err := f(n, iters)
		return time.Duration(ns), err
	}
}

var shmSeq atomic.Uint64

// openShm is shm_open(3) by hand: a new file in /dev/shm, unlinked at once.
func openShm() (*os.File, error) {
	name := fmt.Sprintf("/dev/shm/mirrormem-bench-%d-%d", os.Getpid(), shmSeq.Add(1))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	os.Remove(name)
	return f, nil
}

// openTmp is a temporary file in the default temporary directory, unlinked at once.
func openTmp() (*os.File, error) {
	f, err := os.CreateTemp("", "mirrormem-bench-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// suiteCreate measures adjacent ring create + destroy.
func suiteCreate(b *bencher) {
	sizes := []int{64 << 10, 1 << 20, 16 << 20, 256 << 20, 1 << 30}
	target := 40 * time.Millisecond
	runs := b.cfg.runsOr(5)
	if b.cfg.quick {
		sizes = []int{64 << 10, 1 << 20}
		target = 10 * time.Millisecond
		runs = b.cfg.runsOr(3)
	}
	for _, n := range sizes {
		c := caseSpec{suite: "create", name: sizeName(n), params: map[string]any{"ring_bytes": n, "layout": "adjacent"},
			unit: "us/ring", better: "lower", runs: runs}
		rows := append(libraryCreateRows(n, target),
			row{name: rowShmOpen, run: calibrated(target, func(it int) (time.Duration, error) { return ringFileGo(n, it, openShm) })},
			row{name: rowTmpfile, run: calibrated(target, func(it int) (time.Duration, error) { return ringFileGo(n, it, openTmp) })},
			row{name: rowMemfdC, run: calibrated(target, fromNS(cRingMemfd, n))},
			row{name: rowRawGo, run: calibrated(target, func(it int) (time.Duration, error) { return ringDupGo(n, it) })},
			row{name: refRawC, run: calibrated(target, fromNS(cRingDup, n))},
		)
		b.measure(c, rows)
	}
	c1 := sizeName(1 << 20)
	r := b.rep
	r.addTarget("create", "adjacent 1 MiB ring, duplicate backend", r.find("create", c1, rowMirrorDup), r.find("create", c1, rowRawGo), "<=", 1.3, rowRawGo)
	r.addTarget("create", "adjacent 1 MiB ring, duplicate backend", r.find("create", c1, rowMirrorDup), r.find("create", c1, refRawC), "<=", 1.3, refRawC)
}
