package main

import (
	"fmt"
	"strings"
)

// Ceilings: for each target of the ring suite that compares the ring with another transport,
// the most that any ring could reach against that transport in this run, from a row that no
// ring can beat: the bound for the streams (the same bytes written and read by pinned threads
// with no ring and no synchronisation) and the consumer's own work alone for the mixed frames
// (see mixedLoad.consumerFloor). A target whose ceiling is below its limit cannot be met on
// this machine, whatever the ring does; the note says so with the figures. The targets stay:
// on a machine where the other transports pay more per call, or the cores copy faster, they
// can be met.

// ceilingCheck is one target's ceiling: the ring is compared with against (limit its ratio)
// and cannot be faster than the row ceiling.
type ceilingCheck struct {
	suite, cas, ceiling, against string
	limit                        float64
}

func ringCeilingChecks(sizes []int) []ceilingCheck {
	var out []ceilingCheck
	for _, m := range sizes {
		c := sizeName(m) + " messages"
		out = append(out,
			ceilingCheck{"ring", c, rowCrossCore, rowPipeBufio, 2},
			ceilingCheck{"ring", c, rowCrossCore, rowBytesBuffer, 1.5})
	}
	mc := "frames of 64 B to 4 KiB, decoded and hashed"
	return append(out,
		ceilingCheck{"mixed", mc, rowMixConsumer, rowMixSplit, 1.5},
		ceilingCheck{"mixed", mc, rowMixConsumer, rowMixPipe, 3})
}

// ringCeilingNotes says, from this run's figures, each ceiling and which targets it puts out
// of reach.
func ringCeilingNotes(r *Report, sizes []int) []string {
	var all, out []string
	for _, c := range ringCeilingChecks(sizes) {
		top, ref := r.find(c.suite, c.cas, c.ceiling), r.find(c.suite, c.cas, c.against)
		if !ok(top) || !ok(ref) {
			continue
		}
		x := ratioOfRuns(top, ref)
		s := fmt.Sprintf("%s, vs %s: at most %.2fx (target %.1fx)", c.cas, c.against, x, c.limit)
		all = append(all, s)
		if x < c.limit {
			out = append(out, s)
		}
	}
	if len(all) == 0 {
		return nil
	}
	notes := []string{"Ceilings of the ring's targets against other transports, in this run: the row no ring can beat " +
		"(streams: the bound; mixed frames: “" + rowMixConsumer + "”) over the other transport's row: " + strings.Join(all, "; ") + "."}
	if len(out) > 0 {
		notes = append(notes, "Targets out of reach on this machine in this run, whatever the ring does, because even its ceiling "+
			"falls short: "+strings.Join(out, "; ")+". The ceiling is the work itself with no transport, so where it is "+
			"below a target the other transport's own cost is too small a share of the work for any ring to win by that "+
			"much (for the mixed frames: the copy that the split ring and bufio add, against a decode and a hash of every "+
			"byte). A loaded machine, which slows the two-goroutine rows and not the ceilings, lowers the measured ratios "+
			"further but not the ceilings.")
	}
	return notes
}

// ringWrapNotes splits each consumer-side wrap case (a record decoded in place across the end)
// into what its rows measure: the decode alone (no ring), the ring's own cost per record (the
// mirrored row less the decode: the look at the producer's position and the release) and the
// reassembly the mirror saves (the split row less the mirrored one). The speed-up is
// 1 + reassembly / (decode + ring cost), so where the reassembly is small against the ring's
// cost per record (short records), no mirror reaches a given target on this ring.
func ringWrapNotes(r *Report, sizes []int) []string {
	const limit = 1.5
	dec := decoders[1]
	var parts []string
	for _, m := range sizes {
		c := fmt.Sprintf("%s record %s by the consumer, across the end", sizeName(m), dec.name)
		fl, mir, sp := r.find("wrap-consumer", c, dec.floor), r.find("wrap-consumer", c, rowBenchMirrored), r.find("wrap-consumer", c, rowSplit)
		if !ok(fl) || !ok(mir) || !ok(sp) {
			continue
		}
		cost, saved := mir.Median-fl.Median, sp.Median-mir.Median
		p := fmt.Sprintf("%s: decode %.2f ns, ring %.2f ns, reassembly saved %.2f ns (%.2fx)", sizeName(m), fl.Median, cost, saved, sp.Median/mir.Median)
		if need := saved/(limit-1) - fl.Median; sp.Median/mir.Median < limit {
			p += fmt.Sprintf(", out of reach on this ring: %.1fx needs its cost per record under %.2f ns", limit, need)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return nil
	}
	return []string{"Consumer-side wrap cases, per record (medians): " + strings.Join(parts, "; ") + ". The mirror saves the " +
		"reassembly and nothing else, so its speed-up is 1 + reassembly / (decode + ring); the ring's cost per record is the " +
		"bench ring's look at the producer's position and its release (an atomic add), the same in both rows."}
}
