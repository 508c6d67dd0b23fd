package main

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// CPU time per message: on a machine shared with other programs, a row's wall-clock figure
// also counts the time other programs held the CPUs, and two goroutines that stream need two
// CPUs at once. The CPU time the process spent (user + system, both sides, the Go runtime's
// scheduler and garbage collector included) is what a transport itself costs, and it varies
// far less with the load. It is measured around each run of a row and reported next to the
// row's throughput (suites "ring-cpu" and "mixed-cpu").

// processCPU is the CPU time this process has used so far, in nanoseconds.
func processCPU() int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// cpuTally records the CPU time per message of each run of the rows it wraps.
type cpuTally map[string][]float64

// wrap returns rows whose runs also record their CPU time per message (msgs messages a run).
// Rows named in skip are returned unchanged: the bound's threads spin while the other side
// takes its turn, so its CPU time says nothing.
func (t cpuTally) wrap(rows []row, msgs int, skip ...string) []row {
	out := make([]row, len(rows))
	for i, r := range rows {
		out[i] = r
		if slices.Contains(skip, r.name) {
			continue
		}
		run := r.run
		out[i].run = func() (float64, error) {
			c0 := processCPU()
			v, err := run()
			if err == nil {
				t[r.name] = append(t[r.name], float64(processCPU()-c0)/float64(msgs))
			}
			return v, err
		}
	}
	return out
}

// measurements turns the tally into measurements of suite, next to ms (the rows' own
// measurements of the same runs): ns of CPU time per message, one figure per run.
func (t cpuTally) measurements(suite string, ms []*Measurement) []*Measurement {
	var out []*Measurement
	for _, m := range ms {
		runs := t[m.Row]
		if !ok(m) || len(runs) != len(m.Runs) {
			continue
		}
		mm := &Measurement{Suite: suite, Case: m.Case, Row: m.Row, Name: suite + "/" + m.Case + "/" + m.Row, Params: m.Params,
			Unit: "ns CPU/message", Better: "lower", Runs: runs}
		mm.summarize()
		out = append(out, mm)
	}
	return out
}

// ringCPUNotes says, from this run's CPU-time figures, how much CPU the fastest stream row and
// the mixed-size ring spend per message against the alternatives, and what bounds the ratios.
func ringCPUNotes(r *Report, sizes []int) []string {
	var notes, parts []string
	for _, m := range sizes {
		c := sizeName(m) + " messages"
		ring, pipe, bb, cp := r.find("ring-cpu", c, rowRingFast), r.find("ring-cpu", c, rowPipeBufio), r.find("ring-cpu", c, rowBytesBuffer), r.find("ring-cpu", c, refMemcpy)
		if ok(ring) && ok(pipe) && ok(bb) && ok(cp) {
			parts = append(parts, fmt.Sprintf("%s %.0f ns (%.2fx io.Pipe + bufio's, %.2fx bytes.Buffer + sync.Cond's; one memcpy of the message %.0f ns)",
				sizeName(m), ring.Median, ratioOfRuns(ring, pipe), ratioOfRuns(ring, bb), cp.Median))
		}
	}
	if len(parts) > 0 {
		notes = append(notes, "CPU time per message of the fastest stream row (buffered Writer + take-all ReadSlice), both sides: "+
			strings.Join(parts, "; ")+". Every row pays for the producer's copy, for moving each byte to the other core and for the "+
			"consumer's look at every byte; io.Pipe + bufio adds two copies within a core (bufio's and the pipe's) and a "+
			"hand-off per 64 KiB. Those extra copies are what the ring saves, so at 4 KiB and above the ring can be cheaper than the "+
			"pipe by at most about (ring + two memcpy) / ring, well under 2x; below 1 KiB the per-call costs decide.")
	}
	mc := "frames of 64 B to 4 KiB, decoded and hashed"
	fl, ring, split, pipe := r.find("mixed-cpu", mc, rowMixFloor), r.find("mixed-cpu", mc, rowMixRing), r.find("mixed-cpu", mc, rowMixSplit), r.find("mixed-cpu", mc, rowMixPipe)
	if ok(fl) && ok(ring) && ok(split) && ok(pipe) {
		notes = append(notes, fmt.Sprintf("Mixed-size frames, CPU time per frame: the mirrored ring %.0f ns, the split ring (copy-out) %.0f ns, "+
			"bufio over io.Pipe %.0f ns, and the work every row does with no transport at all (one copy in, decode and hash, on one "+
			"core) %.0f ns. No transport spends less than that floor, so where CPU time decides (a machine that leaves this "+
			"process less than two CPUs) no transport can beat bufio over io.Pipe by more than %.2fx or the split ring by more "+
			"than %.2fx; the rest of the ring's time is the frame's bytes moving to the consumer's core (charged to the hash that "+
			"reads them first), which every transport between two cores pays.",
			ring.Median, split.Median, pipe.Median, fl.Median, pipe.Median/fl.Median, split.Median/fl.Median))
	}
	return notes
}
