package migrate

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/gcstress"
	"github.com/mirrormem/mirrormem/mirror"
)

const (
	envDest         = "MIRRORMEM_POSTCOPY_DESTINATION"   // the source's stream address: this process is the destination
	envPages        = "MIRRORMEM_POSTCOPY_PAGES"         // the source's page server (mirror.ServePages)
	envHTTP         = "MIRRORMEM_POSTCOPY_HTTP"          // or: fetch pages with HTTP Range requests from this URL
	envTouches      = "MIRRORMEM_POSTCOPY_TOUCHES"       // pages the workload reads after resuming
	envSeed         = "MIRRORMEM_POSTCOPY_SEED"          // the workload's randomness
	envGC           = "MIRRORMEM_POSTCOPY_GC"            // the workload collects garbage in a loop while it reads
	envLazy         = "MIRRORMEM_POSTCOPY_LAZY"          // populate nothing: pages come in on the workload's faults only
	envDestCrash    = "MIRRORMEM_POSTCOPY_DEST_CRASH"    // the destination exits (status 3) right after resuming (tests)
	envKillHandlers = "MIRRORMEM_POSTCOPY_KILL_HANDLERS" // kill that many fault handler processes mid-run (tests)

	// demandTimeout bounds one attempt at fetching pages: a source that stops answering
	// without closing its connections fails the page instead of leaving a fault waiting.
	demandTimeout = 30 * time.Second
)

// destReport is what the destination tells the source, as JSON on its stdout.
type destReport struct {
	ResumeNs, DoneNs int64 // CLOCK_MONOTONIC, comparable between processes of one machine
	PreCopied        int
	Touches          int
	TouchMean        time.Duration
	TouchMax         time.Duration
	Faults           uint64
	Verified         int
	Mismatches       int
	FirstMismatch    int
	GCCycles         int64
	Err              string
}

// MaybeDestination runs the destination side of a migration and exits, if this process was
// started as one by Run; otherwise it returns at once. Call it first thing in main (and in
// TestMain of tests that call Run).
func MaybeDestination() {
	addr := os.Getenv(envDest)
	if addr == "" {
		return
	}
	rep, err := runDestination(addr)
	if err != nil {
		rep.Err = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "migrate destination:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// dest is the destination: the store the stream fills, and the memory the workload runs on.
type dest struct {
	size, page, npages int
	store              *alloc.Region // the image's pages, then one state byte per page
	states             []byte        // this process's copy, written to the store at the resume
	pair               *mirror.Pair  // post-copy: the memory, served from the store by the library
	mem                []byte        // what the workload runs on
	lazy               bool

	resumed   chan []int    // the stale pages, at the resume
	ended     chan struct{} // closed when the stream ends
	manifest  []uint32
	precopied int
	doneNs    atomic.Int64
}

// newDest reads the hello and makes the store and, for post-copy, the memory.
func newDest(r io.Reader) (*dest, error) {
	var hello [17]byte
	if _, err := io.ReadFull(r, hello[:]); err != nil || hello[0] != msgHello {
		return nil, sourceGone("hello", err)
	}
	size := int(binary.LittleEndian.Uint64(hello[1:]))
	page := int(binary.LittleEndian.Uint32(hello[9:]))
	if page != alloc.PageSize() || size%page != 0 || size <= 0 {
		return nil, fmt.Errorf("source image of %d bytes in pages of %d: this machine has pages of %d", size, page, alloc.PageSize())
	}
	d := &dest{size: size, page: page, npages: size / page, lazy: os.Getenv(envLazy) != "",
		resumed: make(chan []int, 1), ended: make(chan struct{})}
	var err error
	if d.store, err = alloc.Memfd("postcopy-store", size+d.npages); err != nil {
		return nil, err
	}
	d.states = make([]byte, d.npages)
	d.mem = d.store.Bytes()[:size] // stop-and-copy resumes on the store itself
	if Mode(binary.LittleEndian.Uint32(hello[13:])) == StopAndCopy {
		return d, nil
	}
	// Post-copy: made before the pre-copy arrives, so that the handler processes are serving
	// by the resume.
	cfg, _ := json.Marshal(storeConfig{Store: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), d.store.Fd()),
		Size: int64(size), Page: int64(page), TCP: os.Getenv(envPages), HTTP: os.Getenv(envHTTP)})
	reg, err := alloc.Shared(size)
	if err == nil {
		around := mirror.DefaultFaultAround
		if d.lazy {
			around = 0 // a fault per page: the workload's first touch of each is one
		}
		d.pair, err = mirror.Mirror(reg, mirror.ServeFaults(mirror.NamedSource(storeSourceName, cfg)),
			mirror.FaultAround(around), mirror.CloseRegion())
		if err != nil {
			reg.Close()
		}
	}
	if err != nil {
		d.store.Close()
		return nil, err
	}
	d.mem = d.pair.Original()
	return d, nil
}

func (d *dest) close() {
	if d.pair != nil {
		d.pair.Close()
	}
	d.store.Close()
}

// receive reads the stream: pre-copy, resume, pushed pages, checksums, end. A page goes into
// the store, and (after the resume) its state with pwrite: the page first, so that a handler
// process that sees the state reads the page's final bytes.
func (d *dest) receive(r *bufio.Reader) error {
	buf := make([]byte, d.page)
	fd, states := d.store.Fd(), int64(d.size)
	resumed := false
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return sourceGone("stream", err)
		}
		switch typ {
		case msgPage:
			pg, err1 := getU32(r)
			crc, err2 := getU32(r)
			_, err3 := io.ReadFull(r, buf)
			if err := errors.Join(err1, err2, err3); err != nil {
				return sourceGone("page", err)
			}
			if int(pg) >= d.npages || pageCRC(buf) != crc {
				return fmt.Errorf("page %d arrived corrupted or out of range (crc32c %08x, sent %08x)", pg, pageCRC(buf), crc)
			}
			if d.states[pg] == pageHave { // a page sent twice: never rewrite one the handlers may read
				continue
			}
			copy(d.store.Bytes()[int(pg)*d.page:], buf)
			d.states[pg] = pageHave
			if resumed {
				if _, err := unix.Pwrite(fd, d.states[pg:pg+1], states+int64(pg)); err != nil {
					return fmt.Errorf("store: %w", err)
				}
			} else {
				d.precopied++
			}
		case msgResume:
			count, err := getU32(r)
			if err != nil || int(count) > d.npages {
				return sourceGone("resume", err)
			}
			stale := make([]int, count)
			for i := range stale {
				pg, err := getU32(r)
				if err != nil || int(pg) >= d.npages {
					return sourceGone("resume", err)
				}
				stale[i] = int(pg)
				if d.states[pg] == pageHave {
					d.precopied--
				}
				d.states[pg] = pageStale
			}
			if _, err := unix.Pwrite(fd, d.states, states); err != nil {
				return fmt.Errorf("store: %w", err)
			}
			resumed = true
			d.resumed <- stale
		case msgManifest:
			d.manifest = make([]uint32, d.npages)
			for i := range d.manifest {
				if d.manifest[i], err = getU32(r); err != nil {
					return sourceGone("checksums", err)
				}
			}
		case msgEnd:
			if !resumed || d.manifest == nil {
				return errors.New("the stream ended before the resume or the checksums")
			}
			close(d.ended)
			return nil
		default:
			return fmt.Errorf("unknown message %q on the stream", typ)
		}
	}
}

// fill makes every page present (post-copy, unless lazy): the pre-copied ones at once, then,
// once the stream ended, the others, pushed or fetched from the source by the handler process.
func (d *dest) fill(stale []int) error {
	if d.pair != nil && !d.lazy {
		const chunk = 2 << 20
		isStale := make([]bool, d.npages)
		for _, pg := range stale {
			isStale[pg] = true
		}
		for pg := 0; pg < d.npages; pg++ {
			end := pg
			for end < d.npages && !isStale[end] && end-pg < chunk/d.page {
				end++
			}
			if end > pg {
				if err := d.pair.Populate(pg*d.page, (end-pg)*d.page); err != nil {
					return fmt.Errorf("%w: %v", errPageLost, err)
				}
				pg = end - 1
			}
		}
		<-d.ended
		for off := 0; off < d.size; off += chunk {
			if err := d.pair.Populate(off, min(chunk, d.size-off)); err != nil {
				return fmt.Errorf("%w: %v", errPageLost, err)
			}
		}
	}
	<-d.ended
	if !d.lazy || d.pair == nil {
		d.doneNs.Store(monotonic())
	}
	return nil
}

func runDestination(addr string) (destReport, error) {
	rep := destReport{FirstMismatch: -1}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return rep, fmt.Errorf("dial source %s: %w", addr, err)
	}
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 1<<20)
	d, err := newDest(r)
	if err != nil {
		return rep, err
	}
	// On a failure the process exits with the goroutines below still running: the kernel
	// releases the store and the memory, and the handler processes see it go.
	errs := make(chan error, 3)
	go func() { errs <- d.receive(r) }()
	var stale []int
	select {
	case stale = <-d.resumed:
	case err := <-errs:
		return rep, d.failure(err)
	}
	rep.ResumeNs = monotonic()
	if os.Getenv(envDestCrash) != "" {
		os.Exit(3) // a destination that dies (tests)
	}
	go func() { errs <- d.workload(stale, &rep) }()
	go func() { errs <- d.fill(stale) }()
	for range 3 {
		if err := <-errs; err != nil {
			return rep, d.failure(err)
		}
	}
	rep.DoneNs, rep.PreCopied = d.doneNs.Load(), d.precopied
	if d.pair != nil {
		o, m := d.pair.FaultStats()
		rep.Faults = o.Missing + o.Minor + m.Missing + m.Minor
	}
	// Every page, through the other view (post-copy), against the source's final image.
	view := d.mem
	if d.pair != nil {
		view = d.pair.Mirror()
	}
	for pg, crc := range d.manifest {
		if pageCRC(view[pg*d.page:(pg+1)*d.page]) != crc {
			if rep.Mismatches == 0 {
				rep.FirstMismatch = pg
			}
		} else {
			rep.Verified++
		}
	}
	d.close()
	if rep.Mismatches > 0 {
		return rep, fmt.Errorf("%d of %d pages differ from the source's final image (first: page %d)", rep.Mismatches, d.npages, rep.FirstMismatch)
	}
	return rep, nil
}

// errPageLost: a page of the memory raised SIGBUS. The library poisons a page only when its
// source could not give it: the page never reads as zeros.
var errPageLost = errors.New("a page could not be fetched")

// failure is the error the destination ends with.
func (d *dest) failure(err error) error {
	if !errors.Is(err, errPageLost) {
		return err
	}
	err = fmt.Errorf("%w: %w", errSourceGone, err)
	if ferr := d.pair.FaultErr(); ferr != nil { // may lag the SIGBUS it explains
		err = fmt.Errorf("%w; %v", err, ferr)
	}
	return err
}

// workload is the resumed guest: it reads the pages it was using (the ones written last at the
// source) and then others at random, with copy(), runtime assembly that the collector cannot
// interrupt while it waits in a fault. Fine here: the faults are served by another process. A
// page the source could not give raises SIGBUS, which ends the workload with an error.
func (d *dest) workload(hot []int, rep *destReport) (err error) {
	touches, _ := strconv.Atoi(os.Getenv(envTouches))
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	kill, _ := strconv.Atoi(os.Getenv(envKillHandlers))
	if os.Getenv(envGC) != "" {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.NumGC
		stop := gcstress.Loop()
		defer func() {
			stop()
			runtime.ReadMemStats(&ms)
			rep.GCCycles = int64(ms.NumGC - before)
		}()
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	pg := -1
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: the workload's read of page %d faulted (%v)", errPageLost, pg, r)
		}
	}()
	rng := rand.New(rand.NewPCG(seed, 3))
	order := touchOrder(rng, d.npages, hot)
	buf := make([]byte, d.page)
	var sum byte
	var total time.Duration
	for rep.Touches = 0; rep.Touches < min(touches, d.npages); rep.Touches++ {
		if rep.Touches == 16 && kill > 0 && d.pair != nil {
			pids := d.pair.FaultHandlerPids()
			for _, pid := range pids[:min(kill, len(pids))] {
				syscall.Kill(pid, syscall.SIGKILL) // handler processes that crash (tests)
			}
		}
		pg = order[rep.Touches]
		start := time.Now()
		copy(buf, d.mem[pg*d.page:(pg+1)*d.page])
		t := time.Since(start)
		sum += buf[pg%d.page]
		total += t
		rep.TouchMax = max(rep.TouchMax, t)
	}
	touchSink.Add(uint32(sum)) // keeps the loads: a sum nobody reads could be compiled away
	if rep.Touches > 0 {
		rep.TouchMean = total / time.Duration(rep.Touches)
	}
	if d.lazy {
		d.doneNs.Store(monotonic())
	}
	return nil
}

var touchSink atomic.Uint32

// touchOrder returns every page once: those of hot in random order, then the others.
func touchOrder(rng *rand.Rand, npages int, hot []int) []int {
	seen := make([]bool, npages)
	order := make([]int, 0, npages)
	for _, pg := range hot {
		if !seen[pg] {
			seen[pg] = true
			order = append(order, pg)
		}
	}
	rest := len(order)
	for pg := range seen {
		if !seen[pg] {
			order = append(order, pg)
		}
	}
	rng.Shuffle(rest, func(i, j int) { order[i], order[j] = order[j], order[i] })
	rng.Shuffle(npages-rest, func(i, j int) { order[rest+i], order[rest+j] = order[rest+j], order[rest+i] })
	return order
}
