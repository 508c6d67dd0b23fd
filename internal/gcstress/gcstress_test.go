package gcstress

import (
	"runtime"
	"testing"
)

func TestLoopCollectsAndStops(t *testing.T) {
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := Loop()
	for {
		var now runtime.MemStats
		runtime.ReadMemStats(&now)
		if now.NumGC >= before.NumGC+3 {
			break
		}
		runtime.Gosched()
	}
	stop()
	stop() // idempotent
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	runtime.ReadMemStats(&b)
	if b.NumGC != a.NumGC {
		t.Fatalf("collections went on after stop: %d then %d", a.NumGC, b.NumGC)
	}
}
