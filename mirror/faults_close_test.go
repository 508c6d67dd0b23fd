package mirror

import (
	"sync"
	"testing"

	"github.com/mirrormem/mirrormem/alloc"
)

// Close while other goroutines call the fault methods: they must see ErrClosed (or a result
// from before Close), never a crash on the handler's unmapped counters. Run with -race.
func TestFaultMethodsWhileClose(t *testing.T) {
	defer unchanged(t)()
	n := 64 << 20
	if testing.Short() {
		n = 8 << 20
	}
	for iter := 0; iter < 8; iter++ {
		r := shared(t, n)
		p, err := Mirror(r, ServeFaults(nil), TrackWrites(), VerifyFaults(100))
		if err != nil {
			r.Close()
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		started := make(chan struct{}, 4)
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				started <- struct{}{}
				for k := 0; k < 4; k++ {
					err := p.TrackDirty(0)
					p.Dirty(0)
					p.FaultStats()
					p.FaultLog()
					p.FaultReport()
					p.Verify()
					p.Reset(0, alloc.PageSize())
					p.Discard(1, 0, alloc.PageSize())
					if err == ErrClosed {
						return
					}
				}
			}()
		}
		for g := 0; g < 4; g++ {
			<-started
		}
		if err := p.Close(); err != nil {
			t.Error(err)
		}
		wg.Wait()
		if err := p.TrackDirty(0); err != ErrClosed {
			t.Errorf("TrackDirty after Close: %v, want ErrClosed", err)
		}
		if _, err := p.Dirty(0); err != ErrClosed {
			t.Errorf("Dirty after Close: %v, want ErrClosed", err)
		}
		r.Close()
	}
}
