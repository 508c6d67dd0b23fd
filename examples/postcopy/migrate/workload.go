package migrate

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mirrormem/mirrormem/internal/gcstress"
)

// workload is the resumed guest: it reads the pages it was using (the ones written last at the
// source) and then others at random, with copy(), runtime assembly that the collector cannot
// interrupt while it waits in a fault. Fine here: the faults are served by another process. A
// page the source could not give raises SIGBUS, which ends the workload with an error.
func (d *dest) workload(hot []int, rep *destReport) (err error) {
	touches, _ := strconv.Atoi(os.Getenv(envTouches))
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	kill, _ := strconv.Atoi(os.Getenv(envKillHandlers))
	if os.Getenv(envGC) != "" {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.NumGC
		stop := gcstress.Loop()
		defer func() {
			stop()
			runtime.ReadMemStats(&ms)
			rep.GCCycles = int64(ms.NumGC - before)
		}()
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	pg := -1
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: the workload's read of page %d faulted (%v)", errPageLost, pg, r)
		}
	}()
	rng := rand.New(rand.NewPCG(seed, 3))
	order := touchOrder(rng, d.npages, hot)
	buf := make([]byte, d.page)
	var sum byte
	var total time.Duration
	for rep.Touches = 0; rep.Touches < min(touches, d.npages); rep.Touches++ {
		if rep.Touches == 16 && kill > 0 && d.pair != nil {
			pids := d.pair.FaultHandlerPids()
			for _, pid := range pids[:min(kill, len(pids))] {
				syscall.Kill(pid, syscall.SIGKILL) // handler processes that crash (tests)
			}
		}
		pg = order[rep.Touches]
		start := time.Now()
		copy(buf, d.mem[pg*d.page:(pg+1)*d.page])
		t := time.Since(start)
		sum += buf[pg%d.page]
		total += t
		rep.TouchMax = max(rep.TouchMax, t)
	}
	touchSink.Add(uint32(sum)) // keeps the loads: a sum nobody reads could be compiled away
	if rep.Touches > 0 {
		rep.TouchMean = total / time.Duration(rep.Touches)
	}
	if d.lazy {
		d.doneNs.Store(monotonic())
	}
	return nil
}

var touchSink atomic.Uint32

// touchOrder returns every page once: those of hot in random order, then the others.
func touchOrder(rng *rand.Rand, npages int, hot []int) []int {
	seen := make([]bool, npages)
	order := make([]int, 0, npages)
	for _, pg := range hot {
		if !seen[pg] {
			seen[pg] = true
			order = append(order, pg)
		}
	}
	rest := len(order)
	for pg := range seen {
		if !seen[pg] {
			order = append(order, pg)
		}
	}
	rng.Shuffle(rest, func(i, j int) { order[i], order[j] = order[j], order[i] })
	rng.Shuffle(npages-rest, func(i, j int) { order[rest+i], order[rest+j] = order[rest+j], order[rest+i] })
	return order
}
