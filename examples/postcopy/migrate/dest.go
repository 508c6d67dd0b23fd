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
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
	"golang.org/x/sys/unix"
)

const (
	envDest    = "MIRRORMEM_POSTCOPY_DESTINATION" // the source's address: this process is the destination
	envTouches = "MIRRORMEM_POSTCOPY_TOUCHES"
	envSeed    = "MIRRORMEM_POSTCOPY_SEED"
	envHTTP    = "MIRRORMEM_POSTCOPY_HTTP" // fetch on demand from this URL with HTTP Range requests
	envGC      = "MIRRORMEM_POSTCOPY_GC"   // collect garbage in a loop while pages are being served
)

// destReport is what the destination process tells the source, as JSON on its stdout.
type destReport struct {
	ResumeNs, DoneNs int64 // CLOCK_MONOTONIC, comparable between processes of one machine
	PreCopied        int
	Pushed           int
	OnDemand         int
	DemandRequests   int
	DemandWait       time.Duration
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

var gcCycles atomic.Int64

// page states at the destination.
const (
	pageNone  = 0 // nothing received yet
	pageHave  = 1 // the destination holds the page's final bytes (in staging)
	pageStale = 2 // written at the source after the pre-copy: wait for the push or fetch it
)

type dest struct {
	page, npages int
	src          PageSource

	mu      sync.Mutex
	state   []uint8
	staging []byte // pages received, before the fault handler copies them into the region

	ready    chan struct{} // new pages in staging: wake the installer
	ended    atomic.Bool   // the stream ended: no page will be pushed any more
	failOnce sync.Once
	failed   chan struct{}
	failErr  error

	rep         destReport
	onDemand    atomic.Int64
	demandWait  atomic.Int64
	demandCalls atomic.Int64
}

func (d *dest) fail(err error) {
	d.failOnce.Do(func() {
		d.failErr = err
		close(d.failed)
	})
}

// failure is the error the destination ends with: why, and how much it still missed.
func (d *dest) failure() error {
	d.mu.Lock()
	missing := 0
	for _, st := range d.state {
		if st != pageHave {
			missing++
		}
	}
	d.mu.Unlock()
	return fmt.Errorf("%w; %d of %d pages never arrived, none was replaced by zeros", d.failErr, missing, d.npages)
}

func (d *dest) notify() {
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

// ReadAt serves the region's faults (it is the io.ReaderAt given to mirror.ServeFaults): pages
// the destination holds come from staging; stale pages are fetched from the source now.
func (d *dest) ReadAt(p []byte, off int64) (int, error) {
	first := int(off) / d.page
	n := (len(p) + d.page - 1) / d.page
	var stale []int
	d.mu.Lock()
	for i := 0; i < n; i++ {
		pg := first + i
		dst := p[i*d.page : min((i+1)*d.page, len(p))]
		if d.state[pg] == pageHave {
			copy(dst, d.staging[pg*d.page:])
		} else {
			stale = append(stale, i)
		}
	}
	d.mu.Unlock()
	for len(stale) > 0 {
		run := 1
		for run < len(stale) && stale[run] == stale[0]+run {
			run++
		}
		i := stale[0]
		stale = stale[run:]
		start := time.Now()
		err := d.src.ReadPages(p[i*d.page:(i+run)*d.page], int64(first+i)*int64(d.page))
		d.demandWait.Add(int64(time.Since(start)))
		d.demandCalls.Add(1)
		if err != nil {
			err = fmt.Errorf("page %d: %w", first+i, err)
			d.fail(err)
			return 0, err
		}
		d.mu.Lock()
		for k := 0; k < run; k++ {
			pg := first + i + k
			if d.state[pg] != pageHave {
				copy(d.staging[pg*d.page:(pg+1)*d.page], p[(i+k)*d.page:])
				d.state[pg] = pageHave
				d.onDemand.Add(1)
			}
		}
		d.mu.Unlock()
	}
	return len(p), nil
}

// MaybeDestination runs the destination side of a migration and exits, if this process was
// started as one by Run; otherwise it returns at once. Call it first thing in main (and in
// TestMain of tests that call Run).
func MaybeDestination() {
	addr := os.Getenv(envDest)
	if addr == "" {
		return
	}
	touches, _ := strconv.Atoi(os.Getenv(envTouches))
	seed, _ := strconv.ParseUint(os.Getenv(envSeed), 10, 64)
	if os.Getenv(envGC) != "" {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
					runtime.GC()
					gcCycles.Add(1)
				}
			}
		}()
	}
	rep, err := runDestination(addr, touches, seed)
	rep.GCCycles = gcCycles.Load()
	if err != nil {
		rep.Err = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(rep)
	if err != nil {
		fmt.Fprintln(os.Stderr, "migrate destination:", err)
		// Exit without closing the region: closing the userfaultfd would let the kernel map
		// zero pages under a goroutine still waiting for a page that will never come.
		os.Exit(1)
	}
	os.Exit(0)
}

func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func runDestination(addr string, touches int, seed uint64) (destReport, error) {
	var rep destReport
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return rep, fmt.Errorf("dial source %s: %w", addr, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte{connStream}); err != nil {
		return rep, sourceGone("stream", err)
	}
	r := bufio.NewReaderSize(conn, 1<<20)
	var hello [17]byte
	if _, err := io.ReadFull(r, hello[:]); err != nil || hello[0] != msgHello {
		return rep, sourceGone("hello", err)
	}
	size := int(binary.LittleEndian.Uint64(hello[1:]))
	page := int(binary.LittleEndian.Uint32(hello[9:]))
	mode := Mode(binary.LittleEndian.Uint32(hello[13:]))
	if page != alloc.PageSize() || size%page != 0 || size <= 0 {
		return rep, fmt.Errorf("source image of %d bytes in pages of %d: this machine has pages of %d", size, page, alloc.PageSize())
	}
	d := &dest{page: page, npages: size / page, ready: make(chan struct{}, 1), failed: make(chan struct{})}
	d.state = make([]uint8, d.npages)
	reg, err := alloc.Shared(size)
	if err != nil {
		return rep, err
	}
	var pair *mirror.Pair
	var mem []byte
	if mode == PostCopy {
		if url := os.Getenv(envHTTP); url != "" {
			d.src = HTTPSource(url, nil)
		} else if d.src, err = DialSource(addr, page); err != nil {
			reg.Close()
			return rep, err
		}
		d.staging = make([]byte, size)
		if pair, err = mirror.Mirror(reg, mirror.ServeFaults(d)); err != nil {
			reg.Close()
			d.src.Close()
			return rep, fmt.Errorf("destination region: %w", err)
		}
		mem = pair.Original()
	} else {
		mem = reg.Bytes() // stop-and-copy needs no fault handling: pages are written in place
	}

	// The stream runs in its own goroutine, so that a failure anywhere (the stream, a demand
	// fetch inside a fault) ends the destination at once.
	var manifest []uint32
	resumed := make(chan []int, 1)
	streamDone := make(chan struct{})
	var precopied, pushed int
	go func() {
		defer close(streamDone)
		buf := make([]byte, page)
		for {
			typ, err := r.ReadByte()
			if err != nil {
				d.fail(sourceGone("stream", err))
				return
			}
			switch typ {
			case msgPage:
				pg, err1 := getU32(r)
				crc, err2 := getU32(r)
				_, err3 := io.ReadFull(r, buf)
				if err := errors.Join(err1, err2, err3); err != nil {
					d.fail(sourceGone("page", err))
					return
				}
				if int(pg) >= d.npages || pageCRC(buf) != crc {
					d.fail(fmt.Errorf("page %d arrived corrupted or out of range (crc32c %08x, sent %08x)", pg, pageCRC(buf), crc))
					return
				}
				if mode != PostCopy {
					copy(mem[int(pg)*page:], buf)
					precopied++
					continue
				}
				d.mu.Lock()
				switch d.state[pg] {
				case pageNone: // pre-copy
					copy(d.staging[int(pg)*page:], buf)
					d.state[pg] = pageHave
					precopied++
				case pageStale: // pushed after the resume
					copy(d.staging[int(pg)*page:], buf)
					d.state[pg] = pageHave
					pushed++
				}
				d.mu.Unlock()
				d.notify()
			case msgResume:
				count, err := getU32(r)
				if err != nil || int(count) > d.npages {
					d.fail(sourceGone("resume", err))
					return
				}
				stale := make([]int, count)
				d.mu.Lock()
				for i := range stale {
					pg, err := getU32(r)
					if err != nil || int(pg) >= d.npages {
						d.mu.Unlock()
						d.fail(sourceGone("resume", err))
						return
					}
					stale[i] = int(pg)
					if d.state[pg] == pageHave {
						precopied--
					}
					d.state[pg] = pageStale
				}
				d.mu.Unlock()
				resumed <- stale
			case msgManifest:
				manifest = make([]uint32, d.npages)
				for i := range manifest {
					if manifest[i], err = getU32(r); err != nil {
						d.fail(sourceGone("manifest", err))
						return
					}
				}
			case msgEnd:
				d.ended.Store(true)
				d.notify()
				return
			default:
				d.fail(fmt.Errorf("unknown message %q on the stream", typ))
				return
			}
		}
	}()

	var stale []int
	select {
	case stale = <-resumed:
	case <-d.failed:
		return rep, d.failure()
	}
	rep.ResumeNs = monotonic()

	// Running again. The workload touches the pages it was using (the ones written last at
	// the source) and then others at random; the installer makes every page resident.
	var touchDone, installDone chan struct{}
	var tr destReport // the touch goroutine's results: read only after touchDone
	if mode == PostCopy {
		touchDone = make(chan struct{})
		go func() {
			defer close(touchDone)
			tr.Touches, tr.TouchMean, tr.TouchMax = touch(mem, page, stale, touches, seed)
		}()
		installDone = make(chan struct{})
		go func() {
			defer close(installDone)
			if err := d.install(mem); err != nil {
				d.fail(err)
			}
		}()
	} else {
		touchDone, installDone = make(chan struct{}), make(chan struct{})
		close(touchDone)
		close(installDone)
	}
	wait := func(chs ...chan struct{}) error {
		for _, ch := range chs {
			select {
			case <-ch:
			case <-d.failed:
				return d.failure()
			}
		}
		select {
		case <-d.failed:
			return d.failure()
		default:
			return nil
		}
	}
	if err := wait(streamDone, installDone); err != nil {
		return rep, err
	}
	rep.DoneNs = monotonic() // every page is resident: the migration is over
	if err := wait(touchDone); err != nil {
		return rep, err
	}
	rep.Touches, rep.TouchMean, rep.TouchMax = tr.Touches, tr.TouchMean, tr.TouchMax
	if manifest == nil {
		return rep, errors.New("the source sent no checksums")
	}
	// Every page is resident now: checksums (runtime assembly) cannot fault any more.
	rep.FirstMismatch = -1
	for pg := 0; pg < d.npages; pg++ {
		if pageCRC(mem[pg*page:(pg+1)*page]) != manifest[pg] {
			if rep.Mismatches == 0 {
				rep.FirstMismatch = pg
			}
			rep.Mismatches++
		} else {
			rep.Verified++
		}
	}
	rep.PreCopied, rep.Pushed = precopied, pushed
	rep.OnDemand = int(d.onDemand.Load())
	rep.DemandRequests = int(d.demandCalls.Load())
	rep.DemandWait = time.Duration(d.demandWait.Load())
	if pair != nil {
		o, m := pair.FaultStats()
		rep.Faults = o.Missing + m.Missing
		if err := pair.Close(); err != nil {
			return rep, err
		}
		d.src.Close()
	}
	reg.Close()
	if rep.Mismatches > 0 {
		return rep, fmt.Errorf("%d of %d pages differ from the source's final image (first: page %d)", rep.Mismatches, d.npages, rep.FirstMismatch)
	}
	return rep, nil
}

var touchSink atomic.Uint32

// touch reads one byte of each page it visits with a plain Go loop (never runtime assembly on
// pages that may still be unfilled), and times each first touch.
func touch(mem []byte, page int, hot []int, n int, seed uint64) (count int, mean, worst time.Duration) {
	rng := rand.New(rand.NewPCG(seed, 3))
	order := append([]int(nil), hot...)
	rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	npages := len(mem) / page
	var sum byte
	var total time.Duration
	for count = 0; count < n; count++ {
		pg := rng.IntN(npages)
		if count < len(order) {
			pg = order[count]
		}
		start := time.Now()
		b := mem[pg*page : (pg+1)*page]
		for i := 0; i < len(b); i += 512 {
			sum += b[i]
		}
		d := time.Since(start)
		total += d
		worst = max(worst, d)
	}
	touchSink.Add(uint32(sum)) // keeps the loads: a sum nobody reads could be compiled away
	if count > 0 {
		mean = total / time.Duration(count)
	}
	return count, mean, worst
}

// install makes every page resident in view as soon as the destination holds it, with
// MADV_POPULATE_READ: the fault is raised inside a system call, where the garbage collector
// does not wait for this goroutine (what Pair.Populate does, but for the one view this program
// uses: Populate makes the page present in every view of the pair, a minor fault per page in
// the mirror view that nobody here reads).
func populate(view []byte) error {
	if err := unix.Madvise(view, unix.MADV_POPULATE_READ); err != nil {
		return fmt.Errorf("install: %w", os.NewSyscallError("madvise(MADV_POPULATE_READ)", err))
	}
	return nil
}

// install makes every page resident (see populate) as soon as the destination holds it.
func (d *dest) install(view []byte) error {
	installed := make([]bool, d.npages)
	left := d.npages
	const maxRun = 512 // pages per system call: 2 MiB
	for left > 0 {
		// Once the stream has ended nothing more will be pushed: pull what is still stale
		// (the faults fetch it on demand).
		pull := d.ended.Load()
		d.mu.Lock()
		ready := make([]bool, d.npages)
		for pg, st := range d.state {
			ready[pg] = !installed[pg] && (st == pageHave || pull)
		}
		d.mu.Unlock()
		for pg := 0; pg < d.npages; {
			if !ready[pg] {
				pg++
				continue
			}
			end := pg
			for end < d.npages && ready[end] && end-pg < maxRun {
				end++
			}
			if err := populate(view[pg*d.page : end*d.page]); err != nil {
				return err
			}
			for ; pg < end; pg++ {
				installed[pg] = true
				left--
			}
		}
		if left > 0 {
			select {
			case <-d.ready:
			case <-d.failed:
				return nil
			}
		}
	}
	return nil
}
