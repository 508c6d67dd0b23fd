// Command bench is the benchmark suite of mirrormem: `go run ./bench` measures what the library does
// against what a user would use instead (the peer library loopholelabs/userfaultfd-go, channels,
// bytes.Buffer, a ring with split copies) and against the limit of the machine (the same work in C,
// the kernel's own page faults, memcpy), and prints every figure as a Markdown table.
//
// Usage:
//
//	go run ./bench                   # the whole suite, a few minutes
//	go run ./bench -quick            # a reduced suite, about a minute
//	go run ./bench -out DIR          # also write DIR/results.json and PNG plots
//	go run ./bench -suites faults    # only some suites: create, faults, sources, ring, postcopy, restore
//	go run ./bench -from DIR/results.json -out DIR   # table and plots again, measuring nothing
//
// Every figure is the median of several runs; the rows of one case are measured interleaved
// (run 1 of every row, then run 2 of every row, ...), each run starting at the next row, and
// every comparison is the median of the per-run ratios, so the noise of a shared machine hits
// both sides of a ratio alike. Each target line also shows the spread of its per-run ratios.
// Rows that cannot run say "not measured: <why>" instead of a figure.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/examples/postcopy/migrate"
)

// Row names shared by suites and the Markdown output.
const (
	refC       = "C reference"
	refRawC    = "raw syscalls (C reference)"
	refMemcpy  = "memcpy"
	rowPeer    = "userfaultfd-go"
	rowSplit   = "bench ring, split copies"
	rowRawGo   = "raw syscalls (Go)"
	rowMirring = "mirrored ring (examples/ringbuffer)"
)

type config struct {
	quick  bool
	out    string
	runs   int // 0: the suite's default
	suites map[string]bool
	log    io.Writer // progress lines
	// faultMiB overrides the size of the fault-serving region (tests use a tiny one).
	faultMiB int
	// postcopyMiB overrides the size of the post-copy image (tests use a small one).
	postcopyMiB int
}

func (c *config) want(suite string) bool { return len(c.suites) == 0 || c.suites[suite] }

// runsOr returns the number of runs per figure: the -runs flag, else def.
func (c *config) runsOr(def int) int {
	if c.runs > 0 {
		return c.runs
	}
	return def
}

func main() {
	if isChild() {
		os.Exit(childMain())
	}
	migrate.MaybeDestination() // the post-copy suite's destination process ends here
	var (
		quick = flag.Bool("quick", false, "run a reduced suite (about a minute)")
		out   = flag.String("out", "", "directory for results.json and PNG plots (created if missing)")
		runs  = flag.Int("runs", 0, "runs per figure, every case of every suite (default: each suite's own: create and ring 5, "+
			"faults 3, and 5 to 9 within a time budget for the cases that carry targets, sources 5 to 9 within a budget, "+
			"postcopy 3; with -quick: 3, postcopy 2)")
		suites = flag.String("suites", "", "comma-separated suites to run: "+suiteNames()+" (default: all)")
		quiet  = flag.Bool("q", false, "no progress lines on stderr")
		fmib   = flag.Int("fault-mib", 0, "size of the fault-serving region in MiB (default: 128, or 32 with -quick)")
		from   = flag.String("from", "", "measure nothing: print the table and (with -out) draw the plots of this results.json")
	)
	flag.Parse()
	cfg := &config{quick: *quick, out: *out, runs: *runs, log: os.Stderr, faultMiB: *fmib}
	if *quiet {
		cfg.log = io.Discard
	}
	if *suites != "" {
		cfg.suites = map[string]bool{}
		for _, s := range strings.Split(*suites, ",") {
			s = strings.TrimSpace(s)
			if !knownSuite(s) {
				fmt.Fprintf(os.Stderr, "bench: unknown suite %q (have: %s)\n", s, suiteNames())
				os.Exit(2)
			}
			cfg.suites[s] = true
		}
	}
	if *fmib < 0 || *fmib > 1<<16 {
		fmt.Fprintf(os.Stderr, "bench: -fault-mib %d: need a size between 1 and 65536 MiB\n", *fmib)
		os.Exit(2)
	}
	if *runs < 0 {
		fmt.Fprintf(os.Stderr, "bench: -runs %d: need a positive number of runs\n", *runs)
		os.Exit(2)
	}
	if cfg.out != "" {
		if err := os.MkdirAll(cfg.out, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -out: %v\n", err)
			os.Exit(1)
		}
	}
	var rep *Report
	if *from != "" {
		var err error
		if rep, err = readReport(*from); err != nil {
			fmt.Fprintf(os.Stderr, "bench: -from: %v\n", err)
			os.Exit(1)
		}
	} else {
		rep = run(cfg)
	}
	rep.writeMarkdown(os.Stdout)
	if cfg.out != "" {
		if *from != "" && filepath.Clean(filepath.Dir(*from)) == filepath.Clean(cfg.out) {
			// Redrawing in place: results.json is the input, leave it as it is.
		} else if err := rep.writeJSON(cfg.out); err != nil {
			fmt.Fprintf(os.Stderr, "bench: writing results.json: %v\n", err)
			os.Exit(1)
		}
		if err := writePlots(rep, cfg.out); err != nil {
			fmt.Fprintf(os.Stderr, "bench: writing plots: %v\n", err)
			os.Exit(1)
		}
		fmt.Fprintf(cfg.log, "bench: wrote the plots and results.json in %s\n", cfg.out)
	}
}

// allSuites are the suites in the order they run; -suites names some of them.
var allSuites = []struct {
	name string
	run  func(*bencher)
}{
	{"create", suiteCreate},
	{"faults", suiteFaults},
	{"sources", suiteSources},
	{"ring", suiteRing},
	{"postcopy", suitePostcopy},
	{"restore", suiteRestore},
}

// suiteNames lists allSuites' names, comma-separated.
func suiteNames() string {
	var names []string
	for _, s := range allSuites {
		names = append(names, s.name)
	}
	return strings.Join(names, ", ")
}

func knownSuite(name string) bool {
	for _, s := range allSuites {
		if s.name == name {
			return true
		}
	}
	return false
}

// run measures every wanted suite and returns the report.
func run(cfg *config) *Report {
	rep := &Report{Started: time.Now().UTC(), Quick: cfg.quick, Host: hostInfo()}
	b := &bencher{cfg: cfg, rep: rep, start: time.Now()}
	for _, s := range allSuites {
		if cfg.want(s.name) {
			s.run(b)
		}
	}
	rep.DurationSec = time.Since(b.start).Seconds()
	if b.faultTime > 0 {
		// What 256 MiB would cost: every row touches every page in every run, so the fault
		// suite's time grows with the region.
		est := rep.DurationSec + b.faultTime.Seconds()
		verdict := "past the three minutes the whole suite is meant to take on two CPUs"
		if est <= 180 {
			verdict = "which would have fitted in three minutes in this run (the default stays 128 MiB: on a busy machine the same suite takes twice as long)"
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("Fault serving was measured on a %s region, not 256 MiB: every row touches every "+
			"page of the region in every run, so the fault suite's time grows with the region. It took %.0f s of this %.0f s run; "+
			"with 256 MiB the run would take about %.0f s, %s. The figures are per page; "+
			"`go run ./bench -suites faults -fault-mib 256` measures the larger region.",
			sizeName(b.faultRegion), b.faultTime.Seconds(), rep.DurationSec, est, verdict))
	}
	fmt.Fprintf(cfg.log, "bench: done in %.0fs\n", rep.DurationSec)
	return rep
}

func hostInfo() map[string]any {
	h := map[string]any{
		"goos": runtime.GOOS, "goarch": runtime.GOARCH, "go": runtime.Version(),
		"cpus": runtime.NumCPU(), "cgo": cgoEnabled, "page_size": os.Getpagesize(),
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h["kernel"] = unix.ByteSliceToString(u.Release[:])
	}
	return h
}

// bencher runs the rows of one case side by side and records the result.
type bencher struct {
	cfg   *config
	rep   *Report
	start time.Time
	// faultRegion and faultTime: the fault suite's default region and how long the suite
	// took, for the note on the region's size (full runs only).
	faultRegion int
	faultTime   time.Duration
}

// row is one contender in a case. run returns one figure (in the case's unit) or an error;
// a row whose skip returns a reason is recorded as not measured.
type row struct {
	name string
	skip func() string
	run  func() (float64, error)
	note func() string // optional: said under the table after the runs (e.g. failed attempts)
	// params, if set, are this row's own parameters: they override the case's of the same key
	// (a fault-around row resolves more bytes per fault than the case's, a peer row maps another
	// kind of memory).
	params map[string]any
}

// caseSpec names one case of a suite and the parameters it was measured with.
type caseSpec struct {
	suite, name  string
	params       map[string]any
	unit, better string
	runs         int
	// moreRuns, if above runs, lets a case that carries targets take more runs while its runs
	// so far leave room for one more within budget (counted from its first run).
	moreRuns int
	budget   time.Duration
}

// measure runs every row of c runs times, interleaved, and records one Measurement per row.
// Run k measures the rows in their order rotated by k (row k first).
// A row that fails is recorded as not measured with its error; the other rows go on.
func (b *bencher) measure(c caseSpec, rows []row) []*Measurement {
	ms := make([]*Measurement, len(rows))
	for i, r := range rows {
		ms[i] = &Measurement{Suite: c.suite, Case: c.name, Row: r.name, Name: c.suite + "/" + c.name + "/" + r.name,
			Params: rowParams(c.params, r.params), Unit: c.unit, Better: c.better, Runs: []float64{}}
		if r.skip != nil {
			ms[i].NotMeasured = r.skip()
		}
	}
	t0 := time.Now()
	for k := 0; k < max(c.runs, c.moreRuns); k++ {
		if k >= c.runs && k > 0 {
			if spent := time.Since(t0); spent+spent/time.Duration(k) > c.budget {
				break // one more run would not fit in the case's budget
			}
		}
		total := fmt.Sprint(c.runs)
		if c.moreRuns > c.runs {
			total = fmt.Sprintf("%d-%d", c.runs, c.moreRuns)
		}
		fmt.Fprintf(b.cfg.log, "[%4.0fs] %s: %s run %d/%s\n", time.Since(b.start).Seconds(), c.suite, c.name, k+1, total)
		// Each run starts at the next row: no row is always measured first (right after the
		// previous case) or always right after the same neighbour.
		for j := range rows {
			i := (k + j) % len(rows)
			r := rows[i]
			if ms[i].NotMeasured != "" {
				continue
			}
			v, err := r.run()
			if err != nil {
				ms[i].NotMeasured = err.Error()
				ms[i].Runs = []float64{}
				continue
			}
			ms[i].Runs = append(ms[i].Runs, v)
		}
	}
	for i, m := range ms {
		if rows[i].note != nil {
			m.Note = rows[i].note()
		}
		m.summarize()
		b.rep.Measurements = append(b.rep.Measurements, m)
	}
	return ms
}

// rowParams returns the case's parameters overridden by the row's own, in a map of the row's.
func rowParams(cas, own map[string]any) map[string]any {
	if len(own) == 0 {
		return cas
	}
	m := make(map[string]any, len(cas)+len(own))
	for k, v := range cas {
		m[k] = v
	}
	for k, v := range own {
		m[k] = v
	}
	return m
}

// notMeasured records a row that cannot run in this build or on this machine.
func (b *bencher) notMeasured(c caseSpec, rowName, why string) {
	b.rep.Measurements = append(b.rep.Measurements, &Measurement{Suite: c.suite, Case: c.name, Row: rowName,
		Name: c.suite + "/" + c.name + "/" + rowName, Params: c.params, Unit: c.unit, Better: c.better,
		Runs: []float64{}, NotMeasured: why})
}

func sizeName(n int) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
