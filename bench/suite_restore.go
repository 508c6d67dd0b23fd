package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gonum.org/v1/plot"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// The restore suite measures a snapshot restore over a slow link: an image on an HTTP range
// server that adds a fixed latency to every request and caps the bandwidth of all of them
// together (an object store in the same region), and a workload that touches a working set of
// the image in the order a recorded run touched it, with some noise from run to run. Rows:
// demand faults of 4 KiB, adaptive fault-around, the recorded working set prefetched
// (mirror.Restore) with 4 KiB demand faults, the same followed by a push of every page left
// (the workload's time, and the time until the image is fully resident), and the peer,
// userfaultfd-go, serving the same image through the same server.
//
// The working set is recorded once, by the library (VerifyFaults, then Pair.WorkingSet), from a
// demand-only run of the base order. Every timed run maps fresh memory and is timed from the
// call to mirror.Mirror (the prefetch starts with serving, so making the pair is part of the
// restore) to the workload's last touch; the pages touched are then checked against the image,
// and a pushed image byte for byte.
//
// The server runs in a child process, as a store on another machine would: the pages are
// touched by one goroutine of this process with a plain loop (a goroutine waiting in such a
// fault can be preempted), which keeps its P while it waits. Its latency is slept with
// nanosleep(2), on the goroutine's own thread: the runtime's timers wake sleeps under a
// millisecond a millisecond late.

const (
	restoreLatency = 200 * time.Microsecond
	restoreCap     = 100 << 20 // bytes per second, every request together: an object store's stream
	restoreRunMin  = 8         // pages of the working set's runs: between these
	restoreRunMax  = 56
	restoreFault   = 20 * time.Microsecond // a touch slower than this waited for a fault

	restoreServerStart = 30 * time.Second // for the server process to make its image and listen

	rowRestoreDemand   = "demand faults, 4 KiB"
	rowRestoreAround   = "demand faults, fault-around up to 2 MiB"
	rowRestorePrefetch = "recorded working set prefetched (mirror.Restore)"
	rowRestorePush     = "prefetch, then push of the rest"
	rowRestorePeer     = "userfaultfd-go (4 KiB/fault), HTTP Range io.ReaderAt"
	rowRestoreCap      = "the server's bandwidth cap (configured)"
)

// restoreServer serves an image with added latency and a shared bandwidth cap.
type restoreServer struct {
	image []byte
	url   string

	mu  sync.Mutex
	due time.Time // when the bytes granted so far have gone out at the cap

	reqs   sync.Mutex
	waited []time.Duration // the latency the last requests actually got, in a ring
	nreqs  int
}

func init() { children["restore-server"] = restoreServerChild }

// newRestoreServer starts the server of image in a child process, as a store on another
// machine would be: in this process, its requests sleeping out their latency (nanosleep holds
// the P) would share the one P that the touching goroutine, waiting in a fault, leaves them,
// and a request could wait for another's sleep to end. The child makes the same image
// (makeImage); this process keeps image to check what it reads.
func newRestoreServer(image []byte) (*restoreServer, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=restore-server", childArgsEnv+"="+strconv.Itoa(len(image)))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe() // the child ends when this closes
	if err != nil {
		return nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	// The child ends when its standard input closes; one that does not, or that does not
	// say it is ready in time, is killed rather than left to hang the suite.
	exited := make(chan struct{})
	kill := func() {
		cmd.Process.Kill()
		<-exited
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- line
		cmd.Wait() // after the read: Wait closes the pipe
		close(exited)
	}()
	var line string
	select {
	case line = <-ready:
	case <-time.After(restoreServerStart):
		kill()
		return nil, nil, fmt.Errorf("server process: not ready within %v; %s", restoreServerStart, strings.TrimSpace(stderr.String()))
	}
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
	if !ok {
		kill()
		return nil, nil, fmt.Errorf("server process: %q; %s", line, strings.TrimSpace(stderr.String()))
	}
	stop := func() {
		in.Close()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			kill()
		}
	}
	return &restoreServer{image: image, url: url}, stop, nil
}

// restoreServerChild serves an image of the size arg says until its standard input closes.
func restoreServerChild(arg string) int {
	size, err := strconv.Atoi(arg)
	if err != nil || size <= 0 {
		fmt.Fprintf(os.Stderr, "restore server: bad size %q\n", arg)
		return 2
	}
	s, stop, err := serveRestoreImage(makeImage(size))
	if err != nil {
		fmt.Fprintln(os.Stderr, "restore server:", err)
		return 1
	}
	defer stop()
	fmt.Printf("ready %s\n", s.url)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// serveRestoreImage serves image over HTTP on loopback, at url (the image) and url+"/latency"
// (the median latency added so far, in nanoseconds).
func serveRestoreImage(image []byte) (*restoreServer, func(), error) {
	s := &restoreServer{image: image}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/image", func(w http.ResponseWriter, r *http.Request) {
		t0 := time.Now()
		nanosleep(restoreLatency)
		s.reqs.Lock()
		if len(s.waited) < 1<<16 {
			s.waited = append(s.waited, time.Since(t0))
		} else {
			s.waited[s.nreqs%len(s.waited)] = time.Since(t0)
		}
		s.nreqs++
		s.reqs.Unlock()
		w.Header().Set("ETag", fmt.Sprintf(`"restore-%d"`, len(image)))
		http.ServeContent(&cappedWriter{ResponseWriter: w, s: s}, r, "", time.Time{}, bytes.NewReader(image))
	})
	mux.HandleFunc("/image/latency", func(w http.ResponseWriter, r *http.Request) {
		p50, p99 := s.localLatency()
		fmt.Fprintf(w, "%d %d\n", p50.Nanoseconds(), p99.Nanoseconds())
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	s.url = "http://" + ln.Addr().String() + "/image"
	return s, func() { srv.Close() }, nil
}

func nanosleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}

// latency asks the server for the median and the 99th percentile of the latency it added to
// its last requests (0 if it cannot tell).
func (s *restoreServer) latency() (p50, p99 time.Duration) {
	resp, err := http.Get(s.url + "/latency")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	var a, b int64
	if _, err := fmt.Fscan(resp.Body, &a, &b); err != nil {
		return 0, 0
	}
	return time.Duration(a), time.Duration(b)
}

// localLatency is the median and the 99th percentile of the latency this server added to its
// last requests.
func (s *restoreServer) localLatency() (p50, p99 time.Duration) {
	s.reqs.Lock()
	defer s.reqs.Unlock()
	if len(s.waited) == 0 {
		return 0, 0
	}
	w := slices.Clone(s.waited)
	slices.Sort(w)
	return w[len(w)/2], w[len(w)*99/100]
}

// take waits until n more bytes fit under the cap. Bytes not sent on time (the sleep woke
// late) are credited for up to a millisecond.
func (s *restoreServer) take(n int) {
	s.mu.Lock()
	now := time.Now()
	if floor := now.Add(-time.Millisecond); s.due.Before(floor) {
		s.due = floor
	}
	s.due = s.due.Add(time.Duration(int64(n) * int64(time.Second) / restoreCap))
	wait := time.Until(s.due)
	s.mu.Unlock()
	if wait > 0 {
		nanosleep(wait)
	}
}

// cappedWriter writes through the server's bandwidth cap, 64 KiB at a time.
type cappedWriter struct {
	http.ResponseWriter
	s *restoreServer
}

func (w *cappedWriter) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k := min(len(p)-done, 64<<10)
		w.s.take(k)
		n, err := w.ResponseWriter.Write(p[done : done+k])
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// restoreWorkload is the working set: runs of pages at random places of the image, in the
// order the recorded run touched them.
type restoreWorkload struct {
	npages int
	runs   [][2]int // first page, pages
	used   []bool   // pages of the working set and their neighbours
}

func newRestoreWorkload(size, wsBytes int, seed uint64) *restoreWorkload {
	rng := rand.New(rand.NewPCG(seed, 0x7265737430726521))
	w := &restoreWorkload{npages: size / pageSize, used: make([]bool, size/pageSize)}
	for left := wsBytes / pageSize; left > 0; {
		n := min(restoreRunMin+rng.IntN(restoreRunMax-restoreRunMin+1), left)
		if first, ok := w.place(rng, n); ok {
			w.runs = append(w.runs, [2]int{first, n})
			left -= n
		}
	}
	return w
}

// place finds n free pages in a row, not next to a run (runs never merge), and takes them.
func (w *restoreWorkload) place(rng *rand.Rand, n int) (int, bool) {
	for try := 0; try < 100; try++ {
		first := 1 + rng.IntN(w.npages-n-2)
		if !slices.Contains(w.used[first-1:first+n+1], true) {
			for p := first - 1; p <= first+n; p++ {
				w.used[p] = true
			}
			return first, true
		}
	}
	return 0, false
}

// order is the pages a run touches: the recorded order (noise 0), or with noise seeded by
// noise: a tenth of the runs swapped with the next, one run in twenty replaced by a run of
// pages outside the working set.
func (w *restoreWorkload) order(noise uint64) []uint32 {
	runs := slices.Clone(w.runs)
	if noise != 0 {
		rng := rand.New(rand.NewPCG(noise, 0x6e6f697365))
		used := slices.Clone(w.used)
		ww := &restoreWorkload{npages: w.npages, used: used}
		for i := range runs {
			switch x := rng.IntN(20); {
			case x == 0:
				if first, ok := ww.place(rng, runs[i][1]); ok {
					runs[i][0] = first
				}
			case x <= 2 && i+1 < len(runs):
				runs[i], runs[i+1] = runs[i+1], runs[i]
			}
		}
	}
	var out []uint32
	for _, r := range runs {
		for p := r[0]; p < r[0]+r[1]; p++ {
			out = append(out, uint32(p))
		}
	}
	return out
}

// restoreRun is one timed restore with the library.
type restoreRun struct {
	work      time.Duration   // from Mirror to the workload's last touch
	resident  time.Duration   // push: from Mirror until every page was resident
	faults    []time.Duration // the touches that waited for a fault
	missing   uint64
	prefetchd int // pages resident before the first touch (prefetch head start)
}

// runRestore restores the image served by srv into fresh memory, touches order, and checks
// what it read.
func runRestore(srv *restoreServer, n int, order []uint32, around int, ro *mirror.RestoreOptions) (restoreRun, error) {
	var res restoreRun
	if procs := runtime.GOMAXPROCS(0); procs < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2)) // the push's waiter needs a P of its own
	}
	src := mirror.HTTPSource(srv.url, mirror.HTTPOptions{MaxConns: 16})
	if c, ok := src.(io.Closer); ok {
		defer c.Close()
	}
	r, err := alloc.Shared(n)
	if err != nil {
		return res, err
	}
	opts := []mirror.Option{mirror.ServeFaults(src), mirror.FaultAround(around), mirror.WithHandler(mirror.HandlerProcess), mirror.CloseRegion()}
	if ro != nil {
		opts = append(opts, mirror.Restore(*ro))
	}
	t0 := time.Now()
	p, err := mirror.Mirror(r, opts...)
	if err != nil {
		r.Close()
		return res, err
	}
	defer p.Close()
	resident := make(chan error, 1)
	if ro != nil && ro.Push {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			err := p.WaitResident(ctx)
			res.resident = time.Since(t0)
			resident <- err
		}()
	}
	first := make([]uint64, len(order))
	view := p.Original()
	if err := timedTouch(view, order, first, &res.faults); err != nil {
		return res, err
	}
	res.work = time.Since(t0)
	if ro != nil && ro.Push {
		if err := <-resident; err != nil {
			return res, fmt.Errorf("waiting for the push: %w", err)
		}
	}
	if err := p.FaultErr(); err != nil {
		return res, err
	}
	for i, pg := range order {
		if want := binary.LittleEndian.Uint64(srv.image[int(pg)*pageSize:]); first[i] != want {
			return res, fmt.Errorf("page %d: read %#x, want %#x: wrong data", pg, first[i], want)
		}
	}
	if ro != nil && ro.Push && !bytes.Equal(view, srv.image[:n]) {
		return res, fmt.Errorf("the pushed image differs from the source: wrong data")
	}
	o, _ := p.FaultStats()
	res.missing = o.Missing
	return res, nil
}

// timedTouch loads the first 8 bytes of each page of order with a plain loop, timing each
// load, and keeps the times of those that waited for a fault. A poisoned page is an error.
func timedTouch(view []byte, order []uint32, first []uint64, faults *[]time.Duration) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("touching the pages: %v", r)
		}
	}()
	for i, pg := range order {
		t := time.Now()
		first[i] = binary.LittleEndian.Uint64(view[int(pg)*pageSize:])
		if d := time.Since(t); d > restoreFault {
			*faults = append(*faults, d)
		}
	}
	return nil
}

// p99 is the 99th percentile of d in microseconds (0 for none).
func p99(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[(len(s)*99)/100]) / 1e3
}

// suiteRestore measures the restore rows, interleaved, and derives the latency and residency
// figures from the same runs.
func suiteRestore(b *bencher) {
	size, wsBytes, runs := 256<<20, 32<<20, b.cfg.runsOr(5)
	if b.cfg.quick {
		size, wsBytes, runs = 64<<20, 8<<20, b.cfg.runsOr(3)
	}
	const wseed = 12
	image := makeImage(size)
	srv, stop, err := newRestoreServer(image)
	if err != nil {
		b.rep.Notes = append(b.rep.Notes, "restore suite not measured: "+err.Error())
		return
	}
	defer stop()
	w := newRestoreWorkload(size, wsBytes, wseed)
	ws, err := recordWorkingSet(srv, size, w.order(0))
	if err != nil {
		b.rep.Notes = append(b.rep.Notes, "restore suite not measured: recording the working set: "+err.Error())
		return
	}
	enc, _ := ws.MarshalBinary()

	params := map[string]any{"image_bytes": size, "working_set_bytes": wsBytes, "page_bytes": pageSize,
		"server":   fmt.Sprintf("HTTP Range over loopback, +%v per request, %s/s cap over all requests", restoreLatency, sizeName(restoreCap)),
		"workload": "the working set's runs (8 to 56 pages) in recorded order, each run: 1 in 10 swapped with the next, 1 in 20 replaced by pages outside the working set",
		"touch":    "one 8-byte load per page, one goroutine, plain Go loop, timed from mirror.Mirror",
		"handler":  "handler process (mirror.HandlerProcess), HTTPSource with 16 connections"}
	c := caseSpec{suite: "restore", name: fmt.Sprintf("%s image, %s working set", sizeName(size), sizeName(wsBytes)),
		unit: "ms", better: "lower", runs: runs, params: params}

	var (
		demandP99, prefetchP99 []float64
		residentBW             []float64
		notes                  = map[string]string{}
	)
	noise := uint64(100)
	orderOf := func() []uint32 { noise++; return w.order(noise) }
	libRow := func(name string, around int, ro *mirror.RestoreOptions, after func(restoreRun)) row {
		return row{name: name, run: func() (float64, error) {
			res, err := runRestore(srv, size, orderOf(), around, ro)
			if err != nil {
				return 0, err
			}
			if after != nil {
				after(res)
			}
			notes[name] = fmt.Sprintf("%d missing faults in the last run", res.missing)
			return res.work.Seconds() * 1e3, nil
		}, note: func() string { return notes[name] }}
	}
	pre := &mirror.RestoreOptions{WorkingSet: ws}
	push := &mirror.RestoreOptions{WorkingSet: ws, Push: true}
	rows := []row{
		libRow(rowRestoreDemand, 0, nil, func(r restoreRun) { demandP99 = append(demandP99, p99(r.faults)) }),
		libRow(rowRestoreAround, mirror.DefaultFaultAround, nil, nil),
		libRow(rowRestorePrefetch, 0, pre, func(r restoreRun) { prefetchP99 = append(prefetchP99, p99(r.faults)) }),
		libRow(rowRestorePush, 0, push, func(r restoreRun) {
			residentBW = append(residentBW, float64(size)/r.resident.Seconds()/(1<<20))
		}),
		peerRestoreRow(srv, size, wsBytes, wseed),
	}
	ms := b.measure(c, rows)
	demand, around, prefetch := ms[0], ms[1], ms[2]
	addNote(prefetch, fmt.Sprintf("working set recorded with VerifyFaults and Pair.WorkingSet: %d pages in %d runs, %d bytes encoded", ws.Len(), len(ws.Runs), len(enc)))
	r := b.rep
	p50, p99 := srv.latency()
	r.Notes = append(r.Notes, fmt.Sprintf("restore suite: the server's added latency per request was %v at the median and %v at p99, over its last %d requests (asked: %v; load average %s)",
		p50.Round(time.Microsecond), p99.Round(time.Microsecond), 1<<16, restoreLatency, loadAvg()))

	lat := caseSpec{suite: "restore", name: "p99 latency of a demand fault", unit: "us", better: "lower", runs: runs,
		params: rowParams(params, map[string]any{"fault": fmt.Sprintf("a touch that took more than %v", restoreFault)})}
	dl := derived(lat, rowRestoreDemand, demandP99)
	pl := derived(lat, rowRestorePrefetch+" running", prefetchP99)
	bw := caseSpec{suite: "restore", name: "bandwidth until fully resident", unit: "MiB/s", better: "higher", runs: runs,
		params: rowParams(params, map[string]any{"figure": "image bytes / time from mirror.Mirror until WaitResident returned"})}
	pb := derived(bw, rowRestorePush, residentBW)
	capRuns := make([]float64, len(residentBW))
	for i := range capRuns {
		capRuns[i] = float64(restoreCap) / (1 << 20)
	}
	cb := derived(bw, rowRestoreCap, capRuns)
	r.Measurements = append(r.Measurements, dl, pl, pb, cb)

	r.addTarget("restore", "recorded prefetch at least 3x faster than 4 KiB demand faults", demand, prefetch, ">=", 3, rowRestorePrefetch)
	r.addTarget("restore", "recorded prefetch at least 1.5x faster than fault-around", around, prefetch, ">=", 1.5, rowRestorePrefetch)
	r.addTarget("restore", "p99 demand-fault latency with the prefetch running at most 1.2x without it", pl, dl, "<=", 1.2, rowRestoreDemand)
	r.addTarget("restore", "full residency with push at 70% or more of the capped bandwidth", pb, cb, ">=", 0.7, rowRestoreCap)
}

// derived is a measurement computed from the runs of another case's rows.
func derived(c caseSpec, name string, runs []float64) *Measurement {
	m := &Measurement{Suite: c.suite, Case: c.name, Row: name, Name: c.suite + "/" + c.name + "/" + name,
		Params: c.params, Unit: c.unit, Better: c.better, Runs: runs}
	if len(runs) == 0 {
		m.Runs = []float64{}
		m.NotMeasured = "the row it comes from did not run"
	}
	m.summarize()
	return m
}

// recordWorkingSet runs order once on demand, 4 KiB per fault, with the fault log on, and
// returns the working set the library recorded.
func recordWorkingSet(srv *restoreServer, n int, order []uint32) (*mirror.WorkingSet, error) {
	src := mirror.HTTPSource(srv.url, mirror.HTTPOptions{MaxConns: 16})
	if c, ok := src.(io.Closer); ok {
		defer c.Close()
	}
	r, err := alloc.Shared(n)
	if err != nil {
		return nil, err
	}
	p, err := mirror.Mirror(r, mirror.ServeFaults(src), mirror.FaultAround(0), mirror.VerifyFaults(2*len(order)+4096),
		mirror.WithHandler(mirror.HandlerProcess), mirror.CloseRegion())
	if err != nil {
		r.Close()
		return nil, err
	}
	defer p.Close()
	var faults []time.Duration
	if err := timedTouch(p.Original(), order, make([]uint64, len(order)), &faults); err != nil {
		return nil, err
	}
	ws, err := p.WorkingSet()
	if err != nil {
		return nil, err
	}
	if got := ws.Pages(0); len(got) != len(order) {
		return nil, fmt.Errorf("recorded %d pages, touched %d", len(got), len(order))
	}
	return ws, nil
}

func loadAvg() string {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return "unknown"
	}
	return fmt.Sprintf("%.1f", float64(si.Loads[0])/65536)
}

// plotRestore: the workload's time per row of the restore suite's main case, as horizontal
// bars of the median with a whisker from the fastest to the slowest run.
func plotRestore(r *Report) (*plot.Plot, error) {
	var ms []*Measurement
	runs, cas := 0, ""
	for _, m := range r.Measurements {
		if m.Suite == "restore" && m.Unit == "ms" && m.NotMeasured == "" && len(m.Runs) > 0 {
			ms = append(ms, m)
			cas, runs = m.Case, max(runs, len(m.Runs))
		}
	}
	return medianBars(ms, "Snapshot restore over a slow link: "+cas,
		fmt.Sprintf("ms from Mirror to the last touch (median; whisker: min-max of %d runs)", runs))
}
