package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

// The handler CPU cases measure every handler of this build, per fault and idle, and carry one
// idle target per handler.
func TestFaultCPURows(t *testing.T) {
	b := &bencher{cfg: &config{log: io.Discard, runs: 1}, rep: &Report{}, start: time.Now()}
	suiteFaultCPU(b, 4<<20)
	var sb strings.Builder
	b.rep.writeMarkdown(&sb)
	t.Log("\n" + sb.String())
	n := 0
	for _, m := range b.rep.Measurements {
		if m.Row == rowCPUNative && !cgoEnabled {
			continue
		}
		n++
		if m.NotMeasured != "" || len(m.Runs) != 1 {
			t.Errorf("%s: not measured (%s) or %d runs", m.Name, m.NotMeasured, len(m.Runs))
			continue
		}
		if strings.HasPrefix(m.Case, "handler CPU per") && m.Runs[0] <= 0 {
			t.Errorf("%s: %v us of handler CPU per fault, want some", m.Name, m.Runs[0])
		}
	}
	want := 9 // four handlers, per fault and idle, and one core
	if !cgoEnabled {
		want = 7 // no C thread
	}
	if n != want {
		t.Errorf("%d measurements, want %d", n, want)
	}
	if len(b.rep.Targets) != 4 {
		t.Errorf("%d targets, want one idle target per handler", len(b.rep.Targets))
	}
}
