package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// writePlots draws the figures of the suites that ran into dir as PNG files.
func writePlots(r *Report, dir string) error {
	figs := []struct {
		file string
		draw func(*Report) (*plot.Plot, error)
	}{
		{"create.png", plotCreate},
		{"faults.png", plotFaults4K},
		{"faults-per-fault-size.png", plotFaultSizes},
		{"ring.png", plotRing},
		{"records.png", plotRecords},
		{"wrap.png", plotWrap},
		{"wrap-parse.png", plotParse},
		{"restore.png", plotRestore},
	}
	for _, f := range figs {
		p, err := f.draw(r)
		if err != nil {
			return fmt.Errorf("%s: %w", f.file, err)
		}
		if p == nil {
			continue // the suite did not run
		}
		if err := savePNG(p, 8*vg.Inch, 5*vg.Inch, filepath.Join(dir, f.file)); err != nil {
			return fmt.Errorf("%s: %w", f.file, err)
		}
	}
	return nil
}

// plotPad is the margin left around every plot, so that no label or bar touches the edge.
const plotPad = 0.15 * vg.Inch

// savePNG draws p into a w x h PNG file, inside a margin of plotPad.
func savePNG(p *plot.Plot, w, h vg.Length, file string) error {
	img := vgimg.New(w, h)
	dc := draw.New(img)
	p.Draw(draw.Crop(dc, plotPad, -plotPad, plotPad, -plotPad))
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// series collects, per row, the points (x from the case's parameter, y = median) of one suite,
// in the order the rows first appear. Rows without figures are left out.
func series(r *Report, suite string, x func(*Measurement) (float64, bool)) (names []string, pts map[string]plotter.XYs) {
	pts = map[string]plotter.XYs{}
	for _, m := range r.Measurements {
		if m.Suite != suite || m.NotMeasured != "" || len(m.Runs) == 0 {
			continue
		}
		xv, ok := x(m)
		if !ok {
			continue
		}
		if _, seen := pts[m.Row]; !seen {
			names = append(names, m.Row)
		}
		pts[m.Row] = append(pts[m.Row], plotter.XY{X: xv, Y: m.Median})
	}
	return names, pts
}

func intParam(key string) func(*Measurement) (float64, bool) {
	return func(m *Measurement) (float64, bool) {
		v, ok := m.Params[key].(int)
		return float64(v), ok
	}
}

func linePlot(title, xl, yl string, names []string, pts map[string]plotter.XYs, logY bool) (*plot.Plot, error) {
	return linePlotAt(title, xl, yl, names, pts, logY, true)
}

// linePlotAt is linePlot with the legend on the left (for rising lines) or the right.
func linePlotAt(title, xl, yl string, names []string, pts map[string]plotter.XYs, logY, legendLeft bool) (*plot.Plot, error) {
	var keep []string
	for _, n := range names {
		if len(pts[n]) > 1 { // a single point is no line; its figure is in the table
			keep = append(keep, n)
		}
	}
	names = keep
	if len(names) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xl
	p.Y.Label.Text = yl
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = sizeTicks{}
	if logY {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	p.Legend.Top = true
	p.Legend.Left = legendLeft
	var args []any
	for _, n := range names {
		args = append(args, n, pts[n])
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return nil, err
	}
	return p, nil
}

// sizeTicks labels a logarithmic byte axis at powers of 4 with KiB/MiB/GiB names.
type sizeTicks struct{}

func (sizeTicks) Ticks(lo, hi float64) []plot.Tick {
	var t []plot.Tick
	for v := 1.0; v <= hi*1.0001; v *= 4 {
		if v >= lo*0.9999 {
			t = append(t, plot.Tick{Value: v, Label: sizeName(int(v))})
		}
	}
	return t
}

func plotCreate(r *Report) (*plot.Plot, error) {
	names, pts := series(r, "create", intParam("ring_bytes"))
	return linePlot("Adjacent ring: create + destroy (median)", "ring size", "µs per ring (log)", names, pts, true)
}

func plotRing(r *Report) (*plot.Plot, error) {
	names, pts := series(r, "ring", intParam("message_bytes"))
	return linePlot("SPSC byte stream between two goroutines (median)", "message size", "GB/s (log)", names, pts, true)
}

func plotRecords(r *Report) (*plot.Plot, error) {
	names, pts := series(r, "records", intParam("record_bytes"))
	return linePlot("Records between two goroutines, zero-copy on both sides (median)", "record size", "GB/s (log)", names, pts, true)
}

func plotWrap(r *Report) (*plot.Plot, error) {
	names, pts := series(r, "wrap", func(m *Measurement) (float64, bool) {
		if _, parsed := m.Params["consumer"]; parsed {
			return 0, false
		}
		return intParam("message_bytes")(m)
	})
	return linePlot("One message written and read across the end of a ring (median)", "message size", "ns per message (log)", names, pts, true)
}

func plotParse(r *Report) (*plot.Plot, error) {
	names, pts := series(r, "wrap", func(m *Measurement) (float64, bool) {
		if _, parsed := m.Params["consumer"]; !parsed {
			return 0, false
		}
		return intParam("message_bytes")(m)
	})
	return linePlot("One record written, then checksummed in place, across the end of a ring (median)", "record size", "ns per record (log)", names, pts, true)
}

// plotFaultSizes: time per page against bytes resolved per fault, sequential, one thread,
// for each way of resolving and each row that has more than one size.
func plotFaultSizes(r *Report) (*plot.Plot, error) {
	// One line per (resolution, row): rename the series by the case's resolution.
	var keep []string
	byKind := map[string]plotter.XYs{}
	for _, m := range r.Measurements {
		if m.Suite != "faults" || m.NotMeasured != "" || len(m.Runs) == 0 || m.Params["threads"] != 1 ||
			m.Params["pattern"] != "sequential" || strings.HasPrefix(m.Row, "kernel") || m.Row == rowPeer ||
			strings.Contains(m.Row, "private anon") || strings.Contains(m.Row, "fault-around") {
			continue
		}
		k := fmt.Sprintf("%s: %s", m.Row, m.Params["resolve"])
		if _, seen := byKind[k]; !seen {
			keep = append(keep, k)
		}
		byKind[k] = append(byKind[k], plotter.XY{X: float64(m.Params["bytes_per_fault"].(int)), Y: m.Median})
	}
	return linePlotAt("Fault serving: time per 4 KiB page vs bytes resolved per fault (1 thread, sequential)",
		"bytes resolved per fault (library rows: fault-around cap)", "µs per page (log)", keep, byKind, true, false)
}

// headlineFaultCase is the case drawn in faults.png: 4 KiB MISSING+COPY, one thread, sequential.
var headlineFaultCase = faultCase{kind: kindCopy, block: pageSize, threads: 1}.name()

// plotFaults4K: every row of the headline case as horizontal bars of the median, with a
// whisker from the fastest to the slowest run.
func plotFaults4K(r *Report) (*plot.Plot, error) {
	var ms []*Measurement
	for _, m := range r.Measurements {
		if m.Suite == "faults" && m.Case == headlineFaultCase && m.NotMeasured == "" && len(m.Runs) > 0 {
			ms = append(ms, m)
		}
	}
	return medianBars(ms, "Time per page touched: "+headlineFaultCase,
		fmt.Sprintf("µs per 4 KiB page, lower is better (bar: median; whisker: fastest to slowest of %d runs)", maxRuns(r, headlineFaultCase)))
}

// medianBars draws ms as horizontal bars of their medians, each with a whisker from the
// fastest to the slowest run, the first on top; the axis runs past the longest whisker. It
// returns nil for no measurements.
func medianBars(ms []*Measurement, title, xlabel string) (*plot.Plot, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	var labels []string
	var vals plotter.Values
	var spread spreadBars
	hi := 0.0
	// A nominal axis counts from the bottom: the first measurement gets the top row.
	for k := len(ms) - 1; k >= 0; k-- {
		m := ms[k]
		labels = append(labels, m.Row)
		vals = append(vals, m.Median)
		spread.XYs = append(spread.XYs, plotter.XY{X: m.Median, Y: float64(len(vals) - 1)})
		spread.XErrors = append(spread.XErrors, struct{ Low, High float64 }{m.Median - m.Min, m.Max - m.Median})
		hi = max(hi, m.Max)
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	bars, err := plotter.NewBarChart(vals, vg.Points(14))
	if err != nil {
		return nil, err
	}
	bars.Horizontal = true
	bars.Color = plotutil.Color(0)
	p.Add(bars)
	whiskers, err := plotter.NewXErrorBars(spread)
	if err != nil {
		return nil, err
	}
	whiskers.LineStyle.Width = vg.Points(1.2)
	p.Add(whiskers)
	p.NominalY(labels...)
	p.X.Min, p.X.Max = 0, hi*1.08
	return p, nil
}

// spreadBars is the XYer and XErrorer of plotFaults4K's whiskers.
type spreadBars struct {
	plotter.XYs
	plotter.XErrors
}

func maxRuns(r *Report, cas string) int {
	n := 0
	for _, m := range r.Measurements {
		if m.Suite == "faults" && m.Case == cas {
			n = max(n, len(m.Runs))
		}
	}
	return n
}
