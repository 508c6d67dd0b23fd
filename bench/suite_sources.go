package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// The sources suite measures what serving a page costs with each kind of source and handler
// the library offers for this process's own memory: a file served by the C thread or by the
// handler process, and an HTTP object fetched with range requests by the handler process,
// against the peer, userfaultfd-go, fetching the same object through an io.ReaderAt that does
// range requests (the way its S3 example serves an object).
//
// One image is used throughout: a file of sourceByte bytes, and the same bytes served over
// loopback by an HTTP server of this process (http.ServeContent, with an ETag). Every run maps
// fresh memory, reads the first 8 bytes of every page once, in one goroutine, with a plain
// loop, and then checks those loads and every byte of the view against the image. Making the
// pair (and starting its handler processes) is not timed.
//
// The HTTP server runs in this process, which is safe here though mirror.HTTPSource warns
// against it: the pages are touched by one goroutine with a plain loop (a goroutine waiting in
// such a fault can be preempted, so the collector never waits on it), and at least one more P
// is left for the server's goroutines, which answer the handler process's requests.

const (
	rowSrcFileNative  = "file, C thread"
	rowSrcFileProcess = "file, handler process"
	rowSrcHTTP        = "HTTP Range, handler process"
	rowSrcHTTP4K      = "HTTP Range, handler process, fault-around off (4 KiB/fault)"
	rowSrcPeerHTTP    = "userfaultfd-go (4 KiB/fault), HTTP Range io.ReaderAt"
)

// touchSources says how the suite's rows touch the pages, the "touch" parameter.
const touchSources = "one 8-byte load per page, one goroutine, plain Go loop"

// sourcesTarget is the claim on the handler process: at most this many times the time per
// page of the C thread serving the same file.
const sourcesTarget = 1.15

// sourcesEnv is what the rows of the suite share: the image, its file and its HTTP server.
type sourcesEnv struct {
	image []byte   // the expected bytes, sourceByte(i)
	file  *os.File // the image, already unlinked
	url   string   // the image served over loopback
}

// makeImage returns size bytes of the suite's image.
func makeImage(size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = sourceByte(i)
	}
	return b
}

// newSourcesEnv writes the image to an unlinked temporary file and serves it over HTTP on
// loopback; stop ends the server and closes the file.
func newSourcesEnv(size int) (env *sourcesEnv, stop func(), err error) {
	env = &sourcesEnv{image: makeImage(size)}
	if env.file, err = os.CreateTemp("", "mirrormem-bench-image-*"); err != nil {
		return nil, nil, err
	}
	os.Remove(env.file.Name()) // the descriptor keeps it; nothing is left behind if the run dies
	if _, err := env.file.WriteAt(env.image, 0); err != nil {
		env.file.Close()
		return nil, nil, fmt.Errorf("writing the image: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		env.file.Close()
		return nil, nil, err
	}
	etag := fmt.Sprintf(`"bench-image-%d"`, size)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", etag)
		http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(env.file, 0, int64(size)))
	})}
	go srv.Serve(ln)
	env.url = "http://" + ln.Addr().String() + "/image"
	return env, func() { srv.Close(); env.file.Close() }, nil
}

// readPages loads the first 8 bytes of every page of view in order into first[page], with a
// plain loop (no runtime assembly, so that a fault served by Go code of this process cannot
// stall the collector), and returns the time it took. A page that cannot be served (poisoned:
// SIGBUS) is an error, not the end of the program.
func readPages(view []byte, order []uint32, first []uint64) (d time.Duration, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("touching the pages: %v", r)
		}
	}()
	t0 := time.Now()
	for _, p := range order {
		first[p] = binary.LittleEndian.Uint64(view[int(p)*pageSize:])
	}
	return time.Since(t0), nil
}

// checkImage compares the loads readPages made, then every byte of view, with the image. Every
// page of view must be in memory already (readPages touched them all).
func checkImage(view, image []byte, first []uint64) error {
	for p, got := range first {
		if want := binary.LittleEndian.Uint64(image[p*pageSize:]); got != want {
			return fmt.Errorf("page %d: first 8 bytes read %#x, want %#x: wrong data", p, got, want)
		}
	}
	if bytes.Equal(view, image) {
		return nil
	}
	for p := 0; p < len(view)/pageSize; p++ {
		if !bytes.Equal(view[p*pageSize:(p+1)*pageSize], image[p*pageSize:(p+1)*pageSize]) {
			return fmt.Errorf("page %d differs from the image: wrong data", p)
		}
	}
	return fmt.Errorf("the view differs from the image: wrong data")
}

// pageOrder is the order the suite touches the pages in: in order, or shuffled with seed.
func pageOrder(npages int, random bool, seed uint64) []uint32 {
	return touchOrder(npages, 1, random, seed)[0]
}

// sourceParams are the parameters of a row of the suite: its source, its handler and how many
// bytes a fault may resolve.
func sourceParams(source, handler string, around int) map[string]any {
	p := map[string]any{"source": source, "handler": handler, "bytes_per_fault": max(around, pageSize),
		"memory": "shmem (alloc.Shared), touched through Original only"}
	if around > pageSize {
		p["fault_around"] = fmt.Sprintf("adaptive: one page, doubling on sequential faults, up to %s", sizeName(around))
	} else {
		p["fault_around"] = "off: one page per fault"
	}
	return p
}

const (
	srcFile = "file (*os.File, pread)"
	srcHTTP = "HTTP Range over loopback (mirror.HTTPSource)"
)

// sourceRun is what one row of the suite serves and how it touches the pages.
type sourceRun struct {
	handler  mirror.Handler
	overHTTP bool // the image from the HTTP server, else from the file
	around   int  // fault-around cap (bytes); a page or less: off
	random   bool // pages touched shuffled, else in order
	n        int  // bytes mapped and touched: the image's first n
}

// mirrorSourceRow serves the image to a mirrored pair as sr says.
func mirrorSourceRow(env *sourcesEnv, name string, sr sourceRun) row {
	source := srcFile
	if sr.overHTTP {
		source = srcHTTP
	}
	hname := "C thread (mirror.HandlerNative)"
	if sr.handler == mirror.HandlerProcess {
		hname = "handler process (mirror.HandlerProcess)"
	}
	params := sourceParams(source, hname, sr.around)
	params["region_bytes"] = sr.n
	seed := uint64(7000)
	pages := sr.n / pageSize
	var faults uint64 // of the last run: how much fault-around saved
	r := row{name: name, params: params, run: func() (float64, error) {
		seed++
		d, o, err := mirrorSourceRun(env, sr, pageOrder(pages, sr.random, seed))
		if err != nil {
			return 0, err
		}
		faults = o.Missing
		return d.Seconds() * 1e6 / float64(pages), nil
	}, note: func() string {
		if sr.around <= pageSize || faults == 0 {
			return ""
		}
		return fmt.Sprintf("%d missing faults for %d pages in the last run", faults, pages)
	}}
	if sr.handler == mirror.HandlerNative && !cgoEnabled {
		r.skip = func() string {
			return "HandlerNative is a C thread started through cgo, and this build has CGO_ENABLED=0 (its only handler outside Go is the handler process)"
		}
	}
	return r
}

func mirrorSourceRun(env *sourcesEnv, sr sourceRun, order []uint32) (time.Duration, mirror.FaultStats, error) {
	var none mirror.FaultStats
	var src io.ReaderAt = env.file
	if sr.overHTTP {
		if procs := runtime.GOMAXPROCS(0); procs < 2 {
			// The HTTP server is in this process: leave it a P while the toucher waits in a fault.
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
		}
		src = mirror.HTTPSource(env.url, mirror.HTTPOptions{})
		if c, ok := src.(io.Closer); ok {
			defer c.Close()
		}
	}
	r, err := alloc.Shared(sr.n)
	if err != nil {
		return 0, none, err
	}
	p, err := mirror.Mirror(r, mirror.ServeFaults(src), mirror.FaultAround(sr.around), mirror.WithHandler(sr.handler), mirror.CloseRegion())
	if err != nil {
		r.Close()
		return 0, none, err
	}
	defer p.Close()
	if got := p.FaultHandler(); got != sr.handler {
		return 0, none, fmt.Errorf("served by the %v handler, asked for %v", got, sr.handler)
	}
	first := make([]uint64, len(order))
	d, err := readPages(p.Original(), order, first)
	if err == nil {
		err = p.FaultErr()
	}
	if err == nil {
		err = checkImage(p.Original(), env.image[:sr.n], first)
	}
	if err != nil {
		return 0, none, err
	}
	o, _ := p.FaultStats()
	if o.Missing == 0 {
		return 0, none, fmt.Errorf("no missing fault counted for %d pages touched", len(order))
	}
	return d, o, nil
}

// ratioNote says how a compares with b: the median of the per-run ratios of their times per
// page and their spread.
func ratioNote(a, b *Measurement, what string) string {
	if a == nil || b == nil || a.NotMeasured != "" || b.NotMeasured != "" {
		return ""
	}
	x, lo, hi, n := ratioSpread(a, b)
	spread := "ratio of medians: the rows have different run counts"
	if n > 0 {
		spread = fmt.Sprintf("per-run ratios %.2f–%.2fx over %d runs", lo, hi, n)
	}
	return fmt.Sprintf("%.2fx the time per page of %s (%s)", x, what, spread)
}

// addNote appends s to m's note.
func addNote(m *Measurement, s string) {
	switch {
	case s == "":
	case m.Note == "":
		m.Note = s
	default:
		m.Note += "; " + s
	}
}

// suiteSources measures the sources: the handler process against the C thread on a file, 4 KiB
// per fault (random touch) and with fault-around (sequential touch); the HTTP source against
// the file with fault-around, and the peer on the same HTTP object (sequential touch).
func suiteSources(b *bencher) {
	// The rows that fetch every page with its own HTTP request take more than ten times longer
	// per page than the others: they touch the image's first quarter only.
	size, runs := 64<<20, b.cfg.runsOr(5)
	if b.cfg.quick {
		size, runs = 16<<20, b.cfg.runsOr(3)
	}
	slow := size / 4
	env, stop, err := newSourcesEnv(size)
	if err != nil {
		b.rep.Notes = append(b.rep.Notes, "sources suite not measured: "+err.Error())
		return
	}
	defer stop()
	spec := func(name, pattern string, budget time.Duration) caseSpec {
		c := caseSpec{suite: "sources", name: name, unit: "us/page", better: "lower", runs: runs,
			params: map[string]any{"region_bytes": size, "page_bytes": pageSize, "pattern": pattern, "touch": touchSources}}
		if !b.cfg.quick && b.cfg.runs == 0 {
			// Both cases carry a target: as many more runs as their budget allows.
			c.moreRuns, c.budget = 9, budget
		}
		return c
	}

	random := spec(fmt.Sprintf("%s image, 4 KiB/fault, random", sizeName(size)), "random", 20*time.Second)
	b.measure(random, []row{
		mirrorSourceRow(env, rowSrcFileNative, sourceRun{handler: mirror.HandlerNative, random: true, n: size}),
		mirrorSourceRow(env, rowSrcFileProcess, sourceRun{handler: mirror.HandlerProcess, random: true, n: size}),
	})

	around := mirror.DefaultFaultAround
	seq := spec(fmt.Sprintf("%s image, fault-around up to %s, sequential", sizeName(size), sizeName(around)), "sequential", 30*time.Second)
	sample := fmt.Sprintf(", first %s only", sizeName(slow))
	peer := peerHTTPRow(env, rowSrcPeerHTTP+sample, slow)
	peer.params = sourceParams("HTTP Range over loopback (an io.ReaderAt doing one range request per ReadAt)",
		"userfaultfd-go mapper.Handle (a goroutine of a child process; private anonymous memory)", pageSize)
	peer.params["memory"], peer.params["region_bytes"] = memAnon, slow
	ms := b.measure(seq, []row{
		mirrorSourceRow(env, rowSrcFileNative, sourceRun{handler: mirror.HandlerNative, around: around, n: size}),
		mirrorSourceRow(env, rowSrcFileProcess, sourceRun{handler: mirror.HandlerProcess, around: around, n: size}),
		mirrorSourceRow(env, rowSrcHTTP, sourceRun{handler: mirror.HandlerProcess, overHTTP: true, around: around, n: size}),
		mirrorSourceRow(env, rowSrcHTTP4K+sample, sourceRun{handler: mirror.HandlerProcess, overHTTP: true, n: slow}),
		peer,
	})
	fileNative, fileProc, httpFA, http4K, peerM := ms[0], ms[1], ms[2], ms[3], ms[4]
	addNote(httpFA, ratioNote(httpFA, fileProc, rowSrcFileProcess+" (the same handler)"))
	addNote(httpFA, ratioNote(httpFA, fileNative, rowSrcFileNative))
	addNote(http4K, ratioNote(http4K, httpFA, rowSrcHTTP+" with fault-around"))
	addNote(peerM, ratioNote(peerM, httpFA, rowSrcHTTP+" with fault-around"))
	addNote(peerM, ratioNote(peerM, http4K, rowSrcHTTP+" at 4 KiB/fault, like for like"))

	r := b.rep
	for _, c := range []string{random.name, seq.name} {
		r.addTarget("sources", "file source, "+c+": handler process", r.find("sources", c, rowSrcFileProcess),
			r.find("sources", c, rowSrcFileNative), "<=", sourcesTarget, rowSrcFileNative)
	}
}
