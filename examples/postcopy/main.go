// Command postcopy migrates a changing memory image from one process to another, post-copy,
// and compares it with stop-and-copy of the same image.
//
//	go run ./examples/postcopy [-size BYTES] [-writes N] [-touches N]
//
// The program is the source: it fills an image, starts a workload that keeps writing to it,
// and starts itself again as the destination, which connects over TCP on loopback. The source
// pre-copies every page while the workload runs, stops the workload, and sends only the list
// of pages written since (tracked with userfaultfd write protection). The destination resumes
// at once on memory whose faults the library serves from a handler process: the pages it
// received from its store, the others fetched on demand from the source's page server
// (mirror.TCPSource), while the library pushes every page left in the background. No code of the destination is on the path that serves its faults, so it
// cannot hang under garbage collection, with or without cgo. The destination checks every page
// against the checksums of the source's final image. The same migration runs again with pages
// fetched on demand with HTTP Range requests (mirror.HTTPSource, the path of a restore from an
// object store), then the same image goes through stop-and-copy. The program exits non-zero
// if any page differs or either migration fails.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mirrormem/mirrormem/examples/postcopy/migrate"
)

func main() {
	migrate.MaybeDestination() // the destination process returns no further than this
	size := flag.Int("size", 256<<20, "bytes of the source image")
	writes := flag.Int("writes", 200000, "page writes per second by the source workload")
	touches := flag.Int("touches", 4096, "pages the destination workload reads right after resuming")
	flag.Parse()
	if err := run(*size, *writes, *touches); err != nil {
		fmt.Fprintln(os.Stderr, "postcopy:", err)
		os.Exit(1)
	}
}

func run(size, writes, touches int) error {
	var reps []migrate.Report
	for _, cfg := range []migrate.Config{
		{Mode: migrate.PostCopy},
		{Mode: migrate.PostCopy, DemandOverHTTP: true},
		{Mode: migrate.StopAndCopy},
	} {
		cfg.ImageSize, cfg.WritesPerSecond, cfg.DestTouches = size, writes, touches
		rep, err := migrate.Run(cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", cfg.Mode, err)
		}
		fmt.Println(rep)
		reps = append(reps, rep)
	}
	pc, sc := reps[0], reps[2]
	fmt.Printf("downtime: post-copy %v vs stop-and-copy %v (%.0fx shorter); total: %v vs %v; bytes sent: %.1f vs %.1f MiB\n",
		pc.Downtime.Round(time.Microsecond), sc.Downtime.Round(time.Microsecond), float64(sc.Downtime)/float64(max(pc.Downtime, 1)),
		pc.Total.Round(time.Millisecond), sc.Total.Round(time.Millisecond), float64(pc.BytesSent)/(1<<20), float64(sc.BytesSent)/(1<<20))
	fmt.Println("verification: every page of every destination matches the source's final image")
	return nil
}
