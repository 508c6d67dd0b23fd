package fault

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrNoCPUTime is returned by CPUTime for the engine in this process: its goroutines run on
// the program's threads, so no thread's CPU time is the handler's alone.
var ErrNoCPUTime = errors.New("fault: the Go engine in this process shares its threads with the program: its CPU time cannot be told apart")

// CPUTime returns the CPU time the handler has used since it started: its C thread's (native),
// or the sum over every thread of its handler processes (primary and standby). It is read from
// /proc (schedstat: nanoseconds, not clock ticks), so a second of idle time measures well below
// one percent of a core.
func (h *Handler) CPUTime() (time.Duration, error) {
	switch h.Kind() {
	case "native":
		tid := h.b.hdr(hTID)
		if tid == 0 {
			return 0, nil // the thread has not run yet
		}
		return schedTime(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	case "process":
		var sum time.Duration
		for _, pid := range h.Pids() {
			if pid == 0 {
				continue
			}
			d, err := processCPU(pid)
			if err != nil {
				return 0, err
			}
			sum += d
		}
		return sum, nil
	}
	return 0, ErrNoCPUTime
}

// SpinStats returns how many waits for a fault ended with a message found while spinning
// (hits) and how many spins ended without one (misses, after which the handler blocked).
func (h *Handler) SpinStats() (hits, misses uint64) {
	return h.b.hdr(hSpinHits), h.b.hdr(hSpinMisses)
}

// processCPU sums the CPU time of every thread of process pid.
func processCPU(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("fault: handler process CPU time: %w", err)
	}
	var sum time.Duration
	for _, e := range ents {
		d, err := schedTime(dir + "/" + e.Name() + "/schedstat")
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread exited meanwhile
			}
			return 0, err
		}
		sum += d
	}
	return sum, nil
}

// schedTime reads the first field of a schedstat file: nanoseconds spent on a CPU.
func schedTime(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("fault: %s is empty", path)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("fault: %s: %w", path, err)
	}
	return time.Duration(ns), nil
}
