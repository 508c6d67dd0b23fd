package uffd

import (
	"runtime"
	"testing"
)

// Absurd server options cost nothing absurd either: a fault-around cap of a petabyte, a batch
// of a trillion messages and a billion workers serve a sequential touch with at most
// MaxWorkers goroutines, and buffers no larger than the windows served.
func TestServerAbsurdOptions(t *testing.T) {
	const pages = 64
	fx, done := srvFixture(t, 0, pages, ModeMissing)
	defer done()
	base := runtime.NumGoroutine()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	s, run := fx.serve(t, pattern{seed: 5}, WithFaultAround(1<<50), WithBatch(1<<40), WithWorkers(1<<30))
	fx.touchAll(t)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	workers := runtime.NumGoroutine() - base
	srvStopOK(t, run)
	fx.expect(t, 5)
	if workers > MaxWorkers+4 {
		t.Errorf("%d goroutines while serving, want at most MaxWorkers (%d) and a few", workers, MaxWorkers)
	}
	// The workers' first buffers and message batches, and one buffer grown to the region.
	limit := uint64(MaxWorkers*(firstBuf+2*MaxBatch*64) + 4*pages*srvPage)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > limit {
		t.Errorf("serving %d pages allocated %d bytes, want at most %d", pages, grew, limit)
	}
	if st := s.ServerStats(); st.Messages == 0 {
		t.Errorf("no fault read: %+v", st)
	}
}
