package main

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/examples/postcopy/migrate"
	"github.com/mirrormem/mirrormem/mirror"
	"github.com/mirrormem/mirrormem/uffd"
)

func TestMain(m *testing.M) {
	if isChild() { // the peer's child process is this binary re-executed
		os.Exit(childMain())
	}
	migrate.MaybeDestination() // the post-copy suite's destination process
	os.Exit(m.Run())
}

func TestStats(t *testing.T) {
	for _, tc := range []struct {
		in          []float64
		med, lo, hi float64
	}{
		{in: []float64{3}, med: 3, lo: 3, hi: 3},
		{in: []float64{5, 1, 3}, med: 3, lo: 1, hi: 5},
		{in: []float64{4, 1, 3, 2}, med: 2.5, lo: 1, hi: 4},
		{in: []float64{10, 10, 1, 100, 10}, med: 10, lo: 1, hi: 100},
	} {
		orig := append([]float64(nil), tc.in...)
		med, lo, hi := stats(tc.in)
		if med != tc.med || lo != tc.lo || hi != tc.hi {
			t.Errorf("stats(%v) = %v, %v, %v; want %v, %v, %v", orig, med, lo, hi, tc.med, tc.lo, tc.hi)
		}
		for i := range orig {
			if tc.in[i] != orig[i] {
				t.Errorf("stats reordered its input: %v, was %v", tc.in, orig)
				break
			}
		}
	}
	if med, _, _ := stats(nil); !math.IsNaN(med) {
		t.Errorf("stats(nil) median = %v, want NaN", med)
	}
}

func TestRatioOfRunsPairsRuns(t *testing.T) {
	a := &Measurement{Runs: []float64{1, 2, 3}}
	b := &Measurement{Runs: []float64{3, 1, 2}}
	a.summarize()
	b.summarize()
	// Per-run ratios 1/3, 2, 1.5: median 1.5, where the ratio of the medians is 1.
	if got := ratioOfRuns(a, b); math.Abs(got-1.5) > 1e-9 {
		t.Errorf("ratioOfRuns = %v, want 1.5", got)
	}
	c := &Measurement{Runs: []float64{2, 4}} // different run counts: the ratio of medians, 3/2
	c.summarize()
	if got := ratioOfRuns(c, b); math.Abs(got-1.5) > 1e-9 {
		t.Errorf("ratioOfRuns(c, b) = %v, want 1.5", got)
	}
}

func TestTargets(t *testing.T) {
	r := &Report{}
	fast := &Measurement{Row: "lib", Runs: []float64{1.0, 1.0, 1.0}}
	ref := &Measurement{Row: "ref", Runs: []float64{1.0, 0.95, 1.0}}
	slow := &Measurement{Row: "slow", Runs: []float64{2, 2, 2}}
	gone := &Measurement{Row: "gone", NotMeasured: "skipped: built without cgo"}
	for _, m := range []*Measurement{fast, ref, slow} {
		m.summarize()
	}
	if tg := r.addTarget("s", "fast", fast, ref, "<=", 1.10, "ref"); !tg.Met || math.Abs(tg.Ratio-1) > 1e-9 {
		t.Errorf("fast vs ref: %+v, want met with ratio 1", tg)
	}
	if tg := r.addTarget("s", "slow", slow, ref, "<=", 1.10, "ref"); tg.Met {
		t.Errorf("slow vs ref: %+v, want not met", tg)
	}
	if tg := r.addTarget("s", "speed-up", slow, fast, ">=", 1.5, "lib"); !tg.Met {
		t.Errorf("speed-up 2x >= 1.5: %+v, want met", tg)
	}
	tg := r.addTarget("s", "gone", gone, ref, "<=", 1.1, "ref")
	if tg.Met || !strings.Contains(tg.NotMeasured, "without cgo") {
		t.Errorf("target with an unmeasured side: %+v, want not measured with the reason", tg)
	}
	if tg := r.addTarget("s", "missing", nil, ref, "<=", 1.1, "ref"); tg.Met || tg.NotMeasured == "" {
		t.Errorf("target with a missing side: %+v, want not measured", tg)
	}
	s := r.Targets[0].String()
	if s != "target: fast: ≤1.10x ref — measured 1.00x (runs 1.00–1.05x over 3 runs) ✓" {
		t.Errorf("target line %q", s)
	}
	if s := r.Targets[1].String(); !strings.HasSuffix(s, "measured 2.00x (runs 2.00–2.11x over 3 runs) ✗") {
		t.Errorf("target line %q, want the median of the per-run ratios 2, 2.105, 2, their spread and ✗", s)
	}
	if tg := r.Targets[1]; tg.RatioRuns != 3 || tg.RatioMin != 2 || math.Abs(tg.RatioMax-2/0.95) > 1e-9 {
		t.Errorf("slow vs ref spread: %+v, want 3 runs from 2 to %v", tg, 2/0.95)
	}
	if s := r.Targets[2].String(); !strings.Contains(s, "≥1.50x") {
		t.Errorf("target line %q, want ≥", s)
	}
}

func sampleReport() *Report {
	r := &Report{Host: map[string]any{"cpus": 2}}
	mk := func(suite, cas, row string, runs ...float64) *Measurement {
		m := &Measurement{Suite: suite, Case: cas, Row: row, Name: suite + "/" + cas + "/" + row,
			Params: map[string]any{"ring_bytes": 1 << 20}, Unit: "us/ring", Better: "lower", Runs: runs}
		m.summarize()
		r.Measurements = append(r.Measurements, m)
		return m
	}
	ref := mk("create", "1 MiB", refRawC, 10, 12, 11)
	lib := mk("create", "1 MiB", rowMirrorDup, 11, 13, 12)
	gone := mk("create", "1 MiB", rowMirrorMemfd)
	gone.NotMeasured = "mirror.Mirror is not in the library yet"
	r.addTarget("create", "adjacent ring", lib, ref, "<=", 1.3, refRawC)
	return r
}

func TestMarkdownTable(t *testing.T) {
	var buf bytes.Buffer
	sampleReport().writeMarkdown(&buf)
	out := buf.String()
	for _, want := range []string{
		"| case | row | median | min | max | unit | runs | vs raw syscalls (C reference) |",
		"| 1 MiB | mirror (duplicate backend) | 12.00 | 11.00 | 13.00 | us/ring | 3 | 1.09x |",
		"| 1 MiB | raw syscalls (C reference) | 11.00 | 10.00 | 12.00 | us/ring | 3 |  |",
		"| 1 MiB | mirror (memfd backend) | not measured: mirror.Mirror is not in the library yet |",
		"target: adjacent ring: ≤1.30x raw syscalls (C reference) — measured 1.09x (runs 1.08–1.10x over 3 runs) ✓",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, out)
		}
	}
	// Every table row has as many cells as the header.
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "|") && strings.Count(line, "|") != 9 {
			t.Errorf("row with %d separators: %q", strings.Count(line, "|"), line)
		}
	}
}

// checkSchema asserts that results.json holds every field a reader relies on.
func checkSchema(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("results.json is not JSON: %v", err)
	}
	ms, ok := doc["measurements"].([]any)
	if !ok || len(ms) == 0 {
		t.Fatalf("results.json has no measurements: %.200s", raw)
	}
	for _, x := range ms {
		m := x.(map[string]any)
		for _, k := range []string{"suite", "name", "case", "row", "params", "unit", "median", "min", "max", "runs"} {
			if _, ok := m[k]; !ok {
				t.Errorf("measurement %v lacks %q", m["name"], k)
			}
		}
		runs, _ := m["runs"].([]any)
		if m["not_measured"] == nil && len(runs) == 0 {
			t.Errorf("measurement %v has neither runs nor a reason", m["name"])
		}
		if len(runs) > 0 {
			lo, hi, med := m["min"].(float64), m["max"].(float64), m["median"].(float64)
			if lo > med || med > hi {
				t.Errorf("measurement %v: min %v, median %v, max %v out of order", m["name"], lo, med, hi)
			}
		}
	}
	if _, ok := doc["targets"]; !ok {
		t.Error("results.json lacks targets")
	}
	return doc
}

func TestResultsJSONSchema(t *testing.T) {
	dir := t.TempDir()
	if err := sampleReport().writeJSON(dir); err != nil {
		t.Fatal(err)
	}
	checkSchema(t, filepath.Join(dir, "results.json"))
	back, err := readReport(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var a, b bytes.Buffer
	sampleReport().writeMarkdown(&a)
	back.writeMarkdown(&b)
	if a.String() != b.String() {
		t.Errorf("the table from results.json differs from the measured one:\n%s\nvs\n%s", b.String(), a.String())
	}
	if v, ok := back.Measurements[0].Params["ring_bytes"].(int); !ok || v != 1<<20 {
		t.Errorf("params read back as %#v, want int %d", back.Measurements[0].Params["ring_bytes"], 1<<20)
	}
}

// TestQuickEndToEnd runs the quick suite on a tiny fault region, one run per figure, and
// checks what CI checks: results.json exists and is complete, plots are written.
func TestQuickEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the benchmarks")
	}
	dir := t.TempDir()
	cfg := &config{quick: true, out: dir, runs: 1, log: io.Discard, faultMiB: 4, postcopyMiB: 8}
	rep := run(cfg)
	if err := rep.writeJSON(dir); err != nil {
		t.Fatal(err)
	}
	if err := writePlots(rep, dir); err != nil {
		t.Fatal(err)
	}
	checkSchema(t, filepath.Join(dir, "results.json"))
	plots := []string{"create.png", "ring.png", "wrap.png"}
	if cgoEnabled { // without cgo no fault row runs until the library's own rows exist
		plots = append(plots, "faults.png")
	}
	for _, f := range plots {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("plot %s: %v", f, err)
		}
	}
	// The rows that need nothing but this machine must have figures.
	for _, want := range [][3]string{
		{"create", "1 MiB", rowRawGo},
		{"ring", "64 KiB messages", refMemcpy},
		{"ring", "64 KiB messages", rowSplitEx},
		{"wrap", "64 KiB message across the end", rowSplit},
	} {
		m := rep.find(want[0], want[1], want[2])
		if m == nil || m.NotMeasured != "" || len(m.Runs) != 1 || !(m.Median > 0) {
			t.Errorf("%v: %+v, want one positive figure", want, m)
		}
	}
	if cgoEnabled {
		c := faultCase{kind: kindCopy, block: pageSize, threads: 1, size: 4 << 20}.name()
		for _, row := range []string{refC, rowPeer, kindKernelShmem.String(), rowServerAnon, rowServerAnonFA} {
			if m := rep.find("faults", c, row); m == nil || m.NotMeasured != "" || !(m.Median > 0) {
				t.Errorf("faults %q %q: %+v, want a figure", c, row, m)
			}
		}
		// Every row's own parameters: what it resolves per fault and the memory it faults on.
		for row, want := range map[string]map[string]any{
			rowServer:               {"bytes_per_fault": pageSize, "memory": memShmem},
			rowServerFA:             {"bytes_per_fault": uffd.DefaultFaultAround, "memory": memShmem},
			rowNativeFA:             {"bytes_per_fault": mirror.DefaultFaultAround},
			rowPeer:                 {"bytes_per_fault": pageSize, "memory": memAnon, "resolve": kindCopy.String()},
			rowServerAnon:           {"memory": memAnon},
			kindKernelAnon.String(): {"memory": memAnon, "resolve": kindKernelAnon.resolve()},
		} {
			m := rep.find("faults", c, row)
			if m == nil {
				t.Errorf("faults %q %q: no row", c, row)
				continue
			}
			for k, v := range want {
				if m.Params[k] != v {
					t.Errorf("faults %q %q: param %s = %v, want %v", c, row, k, m.Params[k], v)
				}
			}
		}
	}
	// The sources suite: the handler process's rows in every build, the C thread's and the
	// peer's with cgo; both targets measured with cgo, and said to be missing without.
	figures := map[string]int{}
	for _, m := range rep.Measurements {
		if m.Suite != "sources" {
			continue
		}
		row, _, _ := strings.Cut(m.Row, ", first ") // the rows that touch a sample of the image
		needed := row != rowSrcFileNative || cgoEnabled
		switch {
		case m.NotMeasured == "" && m.Median > 0:
			figures[row]++
		case row == rowSrcPeerHTTP:
			// The peer's own handler gives up on EEXIST, which a fault raised twice (a
			// goroutine preempted by a signal while it waits in the fault) answers: under the
			// race detector and load it can fail every attempt. Its row then says so.
			t.Logf("sources %q %q: not measured: %s", m.Case, m.Row, m.NotMeasured)
		case needed:
			t.Errorf("sources %q %q: not measured: %s", m.Case, m.Row, m.NotMeasured)
		}
	}
	for row, want := range map[string]int{rowSrcFileProcess: 2, rowSrcHTTP: 1, rowSrcHTTP4K: 1} {
		if figures[row] != want {
			t.Errorf("sources %q: %d figures, want %d", row, figures[row], want)
		}
	}
	ntargets := 0
	for _, tg := range rep.Targets {
		if tg.Suite != "sources" {
			continue
		}
		ntargets++
		if measured := tg.NotMeasured == "" && tg.Ratio > 0; measured != cgoEnabled {
			t.Errorf("sources target %q: measured %v in a build with cgo %v: %s", tg.Claim, measured, cgoEnabled, tg)
		}
	}
	if ntargets != 2 {
		t.Errorf("sources: %d targets, want 2", ntargets)
	}
	for _, m := range rep.Measurements {
		if m.Suite == "faults" && (m.Params["memory"] == nil || m.Params["region_bytes"] == nil) {
			t.Errorf("faults %q %q: params %v lack memory or region_bytes", m.Case, m.Row, m.Params)
		}
	}
	var md bytes.Buffer
	rep.writeMarkdown(&md)
	if !strings.Contains(md.String(), "### Fault serving") || !strings.Contains(md.String(), "### Targets") {
		t.Errorf("Markdown output lacks suites:\n%.500s", md.String())
	}
}

func TestTouchPagesSplitsViews(t *testing.T) {
	const npages = 10
	a, b := make([]byte, npages*pageSize), make([]byte, npages*pageSize)
	d := touchPages(touchOrder(npages, 2, true, 7), a, b)
	if d <= 0 {
		t.Errorf("touchPages took %v", d)
	}
	for p := range npages {
		inA, inB := a[p*pageSize] == 1, b[p*pageSize] == 1
		if want := p < npages/2; inA != want || inB == want {
			t.Errorf("page %d: touched through first view %v, second %v; want the first half through the first view only", p, inA, inB)
		}
	}
	one := make([]byte, npages*pageSize)
	touchPages(touchOrder(npages, 1, false, 1), one)
	for p := range npages {
		if one[p*pageSize] != 1 || one[p*pageSize+1] != 0 {
			t.Errorf("one view: page %d bytes %d %d, want 1 0", p, one[p*pageSize], one[p*pageSize+1])
		}
	}
}

func TestMeasureRotatesRows(t *testing.T) {
	b := &bencher{cfg: &config{log: io.Discard}, rep: &Report{}, start: time.Now()}
	var order []string
	mk := func(name string) row {
		return row{name: name, run: func() (float64, error) { order = append(order, name); return 1, nil }}
	}
	ms := b.measure(caseSpec{suite: "s", name: "c", runs: 4}, []row{mk("a"), mk("b"), mk("c")})
	want := "abc bca cab abc"
	got := ""
	for i, n := range order {
		if i > 0 && i%3 == 0 {
			got += " "
		}
		got += n
	}
	if got != want {
		t.Errorf("rows measured in the order %q, want %q (each run starts at the next row)", got, want)
	}
	for i, m := range ms { // results stay with their rows, in the rows' order
		if m.Row != string(rune('a'+i)) || len(m.Runs) != 4 {
			t.Errorf("measurement %d: row %q with %d runs, want %q with 4", i, m.Row, len(m.Runs), string(rune('a'+i)))
		}
	}
}
