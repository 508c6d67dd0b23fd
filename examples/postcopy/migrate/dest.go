package migrate

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
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
	envNoPush       = "MIRRORMEM_POSTCOPY_NO_PUSH"       // no background push: populate once the stream ended
	envPushRate     = "MIRRORMEM_POSTCOPY_PUSH_RATE"     // the background push's cap, bytes per second (0: none)
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
	Pushed           int // pages the background push filled
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

// dest is the destination: the store the stream fills, and the memory the workload runs on.
type dest struct {
	size, page, npages int
	store              *alloc.Region // a memfd: the image's pages, then one state byte per page
	states             []byte        // this process's copy, written to the store at the resume
	pair               *mirror.Pair  // post-copy: the memory, served from the store by the library
	mem                []byte        // what the workload runs on
	lazy               bool
	push               bool          // the library pushes every page once the store is complete (StartPush)
	resumed            chan []int    // the stale pages, at the resume
	ended              chan struct{} // closed at the end of the stream
	manifest           []uint32      // the checksums of the source's final image
	doneNs             atomic.Int64
}

// newDest reads the hello and makes the store and, for post-copy, the memory (newMemory).
func newDest(r io.Reader) (*dest, error) {
	var hello [17]byte
	if _, err := io.ReadFull(r, hello[:]); err != nil || hello[0] != msgHello {
		return nil, sourceGone("hello", err)
	}
	size, page := int(binary.LittleEndian.Uint64(hello[1:])), int(binary.LittleEndian.Uint32(hello[9:]))
	if page != alloc.PageSize() || size%page != 0 || size <= 0 {
		return nil, fmt.Errorf("source image of %d bytes in pages of %d: this machine has pages of %d", size, page, alloc.PageSize())
	}
	d := &dest{size: size, page: page, npages: size / page, states: make([]byte, size/page),
		lazy: os.Getenv(envLazy) != "", resumed: make(chan []int, 1), ended: make(chan struct{})}
	var err error
	if d.store, err = alloc.Memfd("postcopy-store", size+d.npages); err != nil {
		return nil, err
	}
	d.mem = d.store.Bytes()[:size] // stop-and-copy resumes on the store itself
	if Mode(binary.LittleEndian.Uint32(hello[13:])) == StopAndCopy {
		return d, nil
	}
	if err := d.newMemory(); err != nil {
		d.store.Close()
		return nil, err
	}
	return d, nil
}

// newMemory makes the memory a post-copy destination resumes on: a pair whose faults the
// library's handler process serves from a storeSource. It is made before the pre-copy
// arrives, so that the handler processes serve by the resume. Unless lazy (or told not to),
// the library also pushes every page the workload has not faulted in, from the store and the
// source's page server, at a bounded rate: held until the store is complete (StartPush).
func (d *dest) newMemory() error {
	cfg, _ := json.Marshal(storeConfig{Store: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), d.store.Fd()),
		Size: int64(d.size), Page: int64(d.page), TCP: os.Getenv(envPages), HTTP: os.Getenv(envHTTP)})
	opts := []mirror.Option{mirror.ServeFaults(mirror.NamedSource(storeSourceName, cfg)), mirror.CloseRegion()}
	if d.lazy {
		opts = append(opts, mirror.FaultAround(0)) // a fault per page: the workload's first touch of each is one
	} else {
		opts = append(opts, mirror.FaultAround(mirror.DefaultFaultAround))
	}
	if d.push = !d.lazy && os.Getenv(envNoPush) == ""; d.push {
		rate, _ := strconv.ParseInt(os.Getenv(envPushRate), 10, 64)
		opts = append(opts, mirror.Restore(mirror.RestoreOptions{Push: true, HoldPush: true, PushRate: rate}))
	}
	reg, err := alloc.Shared(d.size)
	if err != nil {
		return err
	}
	if d.pair, err = mirror.Mirror(reg, opts...); err != nil {
		reg.Close()
		return err
	}
	d.mem = d.pair.Original()
	return nil
}

// receive reads the stream: pre-copy, resume, checksums, end. A page goes into the store; at
// the resume, the page states follow with pwrite, so that a handler process that sees a
// state reads the page's final bytes.
func (d *dest) receive(r *bufio.Reader) error {
	buf := make([]byte, d.page)
	resumed := false
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return sourceGone("stream", err)
		}
		switch typ {
		case msgPage:
			if resumed {
				return errors.New("a page arrived on the stream after the resume")
			}
			if err := d.receivePage(r, buf); err != nil {
				return err
			}
		case msgResume:
			count, err := getU32(r)
			if err != nil || int(count) > d.npages {
				return sourceGone("resume", err)
			}
			stale := make([]int, count)
			for i := range stale {
				pg, err1 := getU32(r)
				if err = errors.Join(err, err1); err != nil || int(pg) >= d.npages {
					return sourceGone("resume", err)
				}
				stale[i], d.states[pg] = int(pg), pageStale
			}
			if _, err := unix.Pwrite(d.store.Fd(), d.states, int64(d.size)); err != nil {
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

// receivePage reads a page of the pre-copy into the store.
func (d *dest) receivePage(r io.Reader, buf []byte) error {
	pg, err1 := getU32(r)
	crc, err2 := getU32(r)
	_, err3 := io.ReadFull(r, buf)
	if err := errors.Join(err1, err2, err3); err != nil {
		return sourceGone("page", err)
	}
	if int(pg) >= d.npages || pageCRC(buf) != crc {
		return fmt.Errorf("page %d arrived corrupted or out of range (crc32c %08x, sent %08x)", pg, pageCRC(buf), crc)
	}
	copy(d.store.Bytes()[int(pg)*d.page:], buf)
	d.states[pg] = pageHave
	return nil
}

// fill makes every page present (post-copy, unless lazy): the library's push does, or without
// one, faults once the stream ended (Populate). The handler process serves them from the
// store, and fetches from the source the pages it does not hold.
func (d *dest) fill() error {
	switch {
	case d.push:
		if err := d.pair.WaitResident(context.Background()); err != nil {
			return sourceGone("background push", err)
		}
	case d.pair != nil && !d.lazy:
		<-d.ended
		if err := d.pair.Populate(0, d.size); err != nil {
			return fmt.Errorf("%w: %v", errPageLost, err)
		}
	default:
		<-d.ended
	}
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
	rep.ResumeNs, rep.PreCopied = monotonic(), d.npages-len(stale)
	if os.Getenv(envDestCrash) != "" {
		os.Exit(3) // a destination that dies (tests)
	}
	if d.push {
		// The store is complete: what it holds is final, what it does not the source has.
		if err := d.pair.StartPush(); err != nil {
			return rep, err
		}
	}
	var w destReport // the workload's figures: read only once it has ended
	go func() { errs <- d.workload(stale, &w) }()
	go func() { errs <- d.fill() }()
	for range 3 {
		if err := <-errs; err != nil {
			return rep, d.failure(err)
		}
	}
	rep.DoneNs, rep.Touches, rep.TouchMean, rep.TouchMax, rep.GCCycles = d.doneNs.Load(), w.Touches, w.TouchMean, w.TouchMax, w.GCCycles
	defer d.store.Close()
	if d.pair != nil {
		defer d.pair.Close()
	}
	return rep, d.verify(&rep)
}

// verify checks every page of the memory against the checksums of the source's final image,
// and that the library filled each page once, whoever came first (a fault or the push).
func (d *dest) verify(rep *destReport) error {
	view := d.mem
	if d.pair != nil {
		o, m := d.pair.FaultStats()
		rep.Faults = o.Missing + o.Minor + m.Missing + m.Minor
		pr, _ := d.pair.RestoreProgress()
		rep.Pushed = pr.Restored
		if err := d.pair.VerifyHandler(); err != nil {
			return fmt.Errorf("the memory's fault handler: %w", err)
		}
		view = d.pair.Mirror() // checked through the other view
	}
	for pg, crc := range d.manifest {
		if pageCRC(view[pg*d.page:(pg+1)*d.page]) == crc {
			rep.Verified++
		} else if rep.Mismatches++; rep.FirstMismatch < 0 {
			rep.FirstMismatch = pg
		}
	}
	if rep.Mismatches > 0 {
		return fmt.Errorf("%d of %d pages differ from the source's final image (first: page %d)", rep.Mismatches, d.npages, rep.FirstMismatch)
	}
	return nil
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
