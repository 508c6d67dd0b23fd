package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Measurement is one row of one case: the figures of every run and their summary.
// A row that could not run has NotMeasured set and no figures.
type Measurement struct {
	Suite       string         `json:"suite"`
	Name        string         `json:"name"` // suite/case/row, unique in one report
	Case        string         `json:"case"`
	Row         string         `json:"row"`
	Params      map[string]any `json:"params"`
	Unit        string         `json:"unit"`
	Better      string         `json:"better"` // "lower" or "higher"
	Median      float64        `json:"median"`
	Min         float64        `json:"min"`
	Max         float64        `json:"max"`
	Runs        []float64      `json:"runs"`
	NotMeasured string         `json:"not_measured,omitempty"`
	Note        string         `json:"note,omitempty"`
}

// Target is one claim of the project, checked as a ratio of figures measured in the same run.
type Target struct {
	Suite       string  `json:"suite"`
	Claim       string  `json:"claim"`      // what is promised, in words
	Ratio       float64 `json:"ratio"`      // measured ratio (median of per-run ratios)
	RatioMin    float64 `json:"ratio_min"`  // the smallest per-run ratio
	RatioMax    float64 `json:"ratio_max"`  // the largest per-run ratio
	RatioRuns   int     `json:"ratio_runs"` // how many per-run ratios (0: ratio of medians, run counts differ)
	Op          string  `json:"op"`         // "<=" or ">="
	Limit       float64 `json:"limit"`      // the promised bound
	Against     string  `json:"against"`    // what the ratio is relative to
	Met         bool    `json:"met"`        // Ratio Op Limit holds
	NotMeasured string  `json:"not_measured,omitempty"`
}

// Report is everything one invocation of the suite measured; it is what results.json holds.
type Report struct {
	Started      time.Time      `json:"started"`
	DurationSec  float64        `json:"duration_seconds"`
	Quick        bool           `json:"quick"`
	Host         map[string]any `json:"host"`
	Measurements []*Measurement `json:"measurements"`
	Targets      []*Target      `json:"targets"`
	Notes        []string       `json:"notes,omitempty"`
}

// summarize fills Median, Min and Max from Runs. The median of an even count is the mean
// of the two middle figures.
func (m *Measurement) summarize() {
	if len(m.Runs) == 0 {
		m.Median, m.Min, m.Max = 0, 0, 0
		return
	}
	m.Median, m.Min, m.Max = stats(m.Runs)
}

func stats(v []float64) (median, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	if n%2 == 1 {
		median = s[n/2]
	} else {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

// ratioOfRuns is the median of the per-run ratios a[i]/b[i]: each run of a was measured right
// next to the same run of b, so pairing them cancels most of the noise of a shared machine.
// If the run counts differ it falls back to the ratio of medians.
func ratioOfRuns(a, b *Measurement) float64 {
	m, _, _, _ := ratioSpread(a, b)
	return m
}

// ratioSpread is ratioOfRuns with the smallest and largest per-run ratio and their count.
// When the run counts differ there are no per-run ratios: lo and hi are the ratio of medians
// and n is 0.
func ratioSpread(a, b *Measurement) (median, lo, hi float64, n int) {
	if a == nil || b == nil || len(a.Runs) == 0 || len(b.Runs) == 0 {
		return math.NaN(), math.NaN(), math.NaN(), 0
	}
	if len(a.Runs) != len(b.Runs) {
		x := a.Median / b.Median
		return x, x, x, 0
	}
	r := make([]float64, len(a.Runs))
	for i := range a.Runs {
		r[i] = a.Runs[i] / b.Runs[i]
	}
	median, lo, hi = stats(r)
	return median, lo, hi, len(r)
}

// find returns the measurement of row in suite/case, or nil.
func (r *Report) find(suite, cas, row string) *Measurement {
	for _, m := range r.Measurements {
		if m.Suite == suite && m.Case == cas && m.Row == row {
			return m
		}
	}
	return nil
}

// addTarget records a claim "a/b op limit". A missing or unmeasured side makes the target
// "not measured" with the reason, never a pass.
func (r *Report) addTarget(suite, claim string, a, b *Measurement, op string, limit float64, against string) *Target {
	t := &Target{Suite: suite, Claim: claim, Op: op, Limit: limit, Against: against}
	switch {
	case a == nil || b == nil:
		t.NotMeasured = "a row it needs is not in this run"
	case a.NotMeasured != "":
		t.NotMeasured = a.Row + ": " + a.NotMeasured
	case b.NotMeasured != "":
		t.NotMeasured = b.Row + ": " + b.NotMeasured
	default:
		t.Ratio, t.RatioMin, t.RatioMax, t.RatioRuns = ratioSpread(a, b)
		if op == "<=" {
			t.Met = t.Ratio <= limit
		} else {
			t.Met = t.Ratio >= limit
		}
	}
	r.Targets = append(r.Targets, t)
	return t
}

// String renders a target as one line: "target: … ≤1.10x C reference — measured 1.04x (runs
// 0.98–1.12x over 5 runs) ✓", the median of the per-run ratios and their spread.
func (t *Target) String() string {
	sym := "≤"
	if t.Op == ">=" {
		sym = "≥"
	}
	head := fmt.Sprintf("target: %s: %s%.2fx %s", t.Claim, sym, t.Limit, t.Against)
	if t.NotMeasured != "" {
		return head + " — not measured: " + t.NotMeasured
	}
	mark := "✗"
	if t.Met {
		mark = "✓"
	}
	spread := "ratio of medians: the rows have different run counts"
	if t.RatioRuns > 0 {
		spread = fmt.Sprintf("runs %.2f–%.2fx over %d runs", t.RatioMin, t.RatioMax, t.RatioRuns)
	}
	return fmt.Sprintf("%s — measured %.2fx (%s) %s", head, t.Ratio, spread, mark)
}

// writeJSON writes the report as results.json in dir.
func (r *Report) writeJSON(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644)
}

// suiteTitles gives the order and headings of the suites in the Markdown output.
var suiteTitles = []struct{ id, title, ref string }{
	{"create", "Mirror creation: adjacent ring, create + destroy", refRawC},
	{"faults", "Fault serving: time per 4 KiB page touched", refC},
	{"sources", "Fault sources: time per 4 KiB page touched, file and HTTP Range, handler process and C thread", rowSrcFileNative},
	{"ring", "Double-mapped buffers: SPSC byte stream between two goroutines", refMemcpy},
	{"ring-msgs", "Double-mapped buffers: the same streams in messages per second", refMemcpy},
	{"ring-cpu", "Double-mapped buffers: the same streams, CPU time per message (both sides, user + system)", rowPipeBufio},
	{"records", "Mirrored ring: records between two goroutines, zero-copy on both sides", rowCrossCore},
	{"records-msgs", "Mirrored ring: the same records per second", rowCrossCore},
	{"records-cpu", "Mirrored ring: the same records, CPU time per record (both sides, user + system)", ""},
	{"mixed", "Mirrored ring: mixed-size frames, decoded and hashed by the consumer", rowMixPipe},
	{"mixed-cpu", "Mirrored ring: the same frames, CPU time per frame (both sides, user + system)", rowMixPipe},
	{"xproc", "Mirrored ring: streams between two processes", rowXSock},
	{"latency", "Mirrored ring: one-way latency at low load", rowLatSockXproc},
	{"wrap", "Double-mapped buffers: one message written and read across the wrap", rowSplit},
	{"wrap-consumer", "Double-mapped buffers: the consumer alone, one record across the wrap", rowSplit},
	{"postcopy", "Post-copy migration (examples/postcopy, two processes over loopback)", rowStopAndCopy},
	{"restore", "Snapshot restore from a slow HTTP range server: recorded working set, prefetch, push", rowRestoreDemand},
}

// writeMarkdown prints every suite as a Markdown table, then the targets.
// The "vs" column is the median of per-run ratios against the suite's reference row of the same case.
func (r *Report) writeMarkdown(w io.Writer) {
	mode := "go run ./bench"
	if r.Quick {
		mode += " -quick"
	}
	fmt.Fprintf(w, "Measured %s with `%s` (%.0f s) on Linux %v, %v CPUs, %v, cgo %v. Each figure is the median of its runs; "+
		"the last column is the median of per-run ratios against the suite's reference row, measured side by side.\n",
		r.Started.Format("2006-01-02 15:04 MST"), mode, r.DurationSec, r.Host["kernel"], r.Host["cpus"], r.Host["go"], r.Host["cgo"])
	for _, s := range suiteTitles {
		var rows []*Measurement
		for _, m := range r.Measurements {
			if m.Suite == s.id {
				rows = append(rows, m)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n### %s\n\n", s.title)
		vs := "vs " + s.ref
		if s.ref == "" {
			vs = "—"
		}
		fmt.Fprintf(w, "| case | row | median | min | max | unit | runs | %s |\n", vs)
		fmt.Fprintf(w, "|---|---|---:|---:|---:|---|---:|---:|\n")
		for _, m := range rows {
			if m.NotMeasured != "" {
				fmt.Fprintf(w, "| %s | %s | not measured: %s | | | | | |\n", m.Case, m.Row, mdEscape(m.NotMeasured))
				continue
			}
			ratio := ""
			if s.ref != "" && m.Row != s.ref {
				if ref := r.find(s.id, m.Case, s.ref); ref != nil && ref.NotMeasured == "" {
					if x := ratioOfRuns(m, ref); !math.IsInf(x, 0) && !math.IsNaN(x) {
						ratio = fmt.Sprintf("%.2fx", x)
					}
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %d | %s |\n", m.Case, m.Row,
				num(m.Median), num(m.Min), num(m.Max), m.Unit, len(m.Runs), ratio)
		}
		said := map[string]bool{} // a row's note is said once per suite, with the cases it applies to
		for _, m := range rows {
			if m.Note == "" || said[m.Row+"\x00"+m.Note] {
				continue
			}
			said[m.Row+"\x00"+m.Note] = true
			var cases []string
			all := true
			for _, o := range rows {
				if o.Row == m.Row && o.Note == m.Note {
					cases = append(cases, o.Case)
				} else if o.Row == m.Row {
					all = false
				}
			}
			where := strings.Join(cases, "; ")
			if all && len(cases) > 1 {
				where = "every case"
			}
			fmt.Fprintf(w, "\n%s (%s): %s\n", m.Row, where, m.Note)
		}
	}
	if len(r.Targets) > 0 {
		fmt.Fprintf(w, "\n### Targets\n\n")
		for _, t := range r.Targets {
			fmt.Fprintf(w, "- %s\n", t)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\n%s\n", n)
	}
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// num prints a figure with three significant digits, without exponent for the usual range.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "NaN"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	case a >= 0.01 || a == 0:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// readReport loads a results.json written by writeJSON. Integral parameters come back as int,
// as they were measured.
func readReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, m := range r.Measurements {
		for k, v := range m.Params {
			if f, ok := v.(float64); ok && f == math.Trunc(f) && math.Abs(f) < 1<<53 {
				m.Params[k] = int(f)
			}
		}
	}
	return &r, nil
}
