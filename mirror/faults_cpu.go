package mirror

import (
	"fmt"
	"time"
)

// FaultHandlerCPU returns the CPU time the pair's fault handler has used since it started:
// the C thread's (HandlerNative), or every thread of the handler processes, primary and
// standby (HandlerProcess). The handlers spin for a few microseconds before they block while
// faults come close together, and block at once when faults stop: sample this while the views
// sit idle to see that an idle handler uses no CPU. HandlerGo shares the program's threads, so
// its CPU time cannot be told apart: that is an error.
func (p *Pair) FaultHandlerCPU() (time.Duration, error) {
	sv, err := p.serving()
	if err != nil {
		return 0, err
	}
	defer p.s.mu.RUnlock()
	if sv.h == nil {
		return 0, fmt.Errorf("mirror: FaultHandlerCPU: the %v handler runs on the program's own threads; its CPU time cannot be told apart", sv.kind)
	}
	d, err := sv.h.CPUTime()
	if err != nil {
		return 0, fmt.Errorf("mirror: FaultHandlerCPU: %w", err)
	}
	return d, nil
}
