package main

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/mirrormem/mirrormem/examples/postcopy/migrate"
)

// The post-copy suite runs the examples' live-migration prototype (examples/postcopy/migrate):
// a source process with a changing image, a destination process (this binary re-executed, see
// migrate.MaybeDestination in main) that resumes at once and takes missing pages on demand,
// against stop-and-copy of the same image. Every migration verifies every page.

const (
	rowPostcopySocket = "post-copy (demand over socket)"
	rowPostcopyHTTP   = "post-copy (demand over HTTP Range)"
	rowStopAndCopy    = "stop-and-copy"
)

func suitePostcopy(b *bencher) {
	size, runs := 256<<20, b.cfg.runsOr(3)
	if b.cfg.quick {
		size, runs = 32<<20, b.cfg.runsOr(2)
	}
	if b.cfg.postcopyMiB > 0 {
		size = b.cfg.postcopyMiB << 20
	}
	modes := []struct {
		name string
		cfg  migrate.Config
	}{
		{rowPostcopySocket, migrate.Config{Mode: migrate.PostCopy}},
		{rowPostcopyHTTP, migrate.Config{Mode: migrate.PostCopy, DemandOverHTTP: true}},
		{rowStopAndCopy, migrate.Config{Mode: migrate.StopAndCopy}},
	}
	figures := []struct {
		what, unit, better string
		get                func(migrate.Report) float64
	}{
		{"downtime", "ms", "lower", func(r migrate.Report) float64 { return ms(r.Downtime) }},
		{"total time", "ms", "lower", func(r migrate.Report) float64 { return ms(r.Total) }},
		{"missing faults served at the destination", "faults", "lower", func(r migrate.Report) float64 { return float64(r.DestFaults) }},
		{"pages fetched after the resume (faults and push)", "pages", "lower", func(r migrate.Report) float64 { return float64(r.Fetched + r.Refetched) }},
		{"destination reads right after resuming, mean", "us/page", "lower", func(r migrate.Report) float64 { return float64(r.TouchMean) / 1e3 }},
		{"bytes sent", "MiB", "lower", func(r migrate.Report) float64 { return float64(r.BytesSent) / (1 << 20) }},
	}
	ms0 := make([][]*Measurement, len(figures))
	for f, fig := range figures {
		for _, m := range modes {
			c := fmt.Sprintf("%s image: %s", sizeName(size), fig.what)
			ms0[f] = append(ms0[f], &Measurement{Suite: "postcopy", Case: c, Row: m.name, Name: "postcopy/" + c + "/" + m.name,
				Params: map[string]any{"image_bytes": size, "figure": fig.what}, Unit: fig.unit, Better: fig.better, Runs: []float64{}})
		}
	}
	for f, fig := range figures {
		if strings.HasPrefix(fig.what, "destination reads") {
			ms0[f][2].NotMeasured = "stop-and-copy resumes with every page in place; the prototype times no reads there"
		}
	}
	for k := range runs {
		fmt.Fprintf(b.cfg.log, "[%4.0fs] postcopy: %s image run %d/%d\n", time.Since(b.start).Seconds(), sizeName(size), k+1, runs)
		for i, m := range modes {
			if ms0[0][i].NotMeasured != "" {
				continue
			}
			cfg := m.cfg
			var stderr bytes.Buffer
			cfg.ImageSize, cfg.Seed, cfg.Stderr = size, uint64(k+1), &stderr
			rep, err := migrate.Run(cfg)
			if err == nil && rep.VerifiedPages != rep.Pages {
				err = fmt.Errorf("%d of %d pages verified", rep.VerifiedPages, rep.Pages)
			}
			for f, fig := range figures {
				if ms0[f][i].NotMeasured != "" {
					continue
				}
				if err != nil {
					why := err.Error()
					if s := strings.TrimSpace(stderr.String()); s != "" {
						why += " (" + s + ")"
					}
					ms0[f][i].NotMeasured, ms0[f][i].Runs = why, []float64{}
					continue
				}
				ms0[f][i].Runs = append(ms0[f][i].Runs, fig.get(rep))
			}
		}
	}
	for _, row := range ms0 {
		for _, m := range row {
			m.summarize()
			b.rep.Measurements = append(b.rep.Measurements, m)
		}
	}
	r := b.rep
	c := fmt.Sprintf("%s image: downtime", sizeName(size))
	r.addTarget("postcopy", "post-copy downtime", r.find("postcopy", c, rowPostcopySocket), r.find("postcopy", c, rowStopAndCopy), "<=", 1, rowStopAndCopy)
}

func ms(d time.Duration) float64 { return d.Seconds() * 1e3 }
