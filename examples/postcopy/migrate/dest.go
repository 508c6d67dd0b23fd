package migrate

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/uffd"
	"golang.org/x/sys/unix"
)

const (
	envDest       = "MIRRORMEM_POSTCOPY_DESTINATION" // the source's address: this process is the destination's pager
	envGuest      = "MIRRORMEM_POSTCOPY_GUEST"       // this process is the guest the pager started
	envTouches    = "MIRRORMEM_POSTCOPY_TOUCHES"
	envSeed       = "MIRRORMEM_POSTCOPY_SEED"
	envHTTP       = "MIRRORMEM_POSTCOPY_HTTP"        // fetch on demand from this URL with HTTP Range requests
	envGC         = "MIRRORMEM_POSTCOPY_GC"          // the guest collects garbage in a loop while it runs
	envLazy       = "MIRRORMEM_POSTCOPY_LAZY"        // install pages only when the guest faults on them
	envGuestCrash = "MIRRORMEM_POSTCOPY_GUEST_CRASH" // the guest exits with an error after the resume (tests)
	envCrashAfter = "MIRRORMEM_POSTCOPY_CRASH_AFTER" // the pager kills itself after this many faults (tests)

	// demandTimeout bounds one demand fetch: a source that stops answering without closing
	// its connection fails the migration instead of leaving a fault waiting for ever.
	demandTimeout = 30 * time.Second
)

// destReport is what the destination's pager tells the source, as JSON on its stdout.
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

// page states at the destination.
const (
	pageNone  = 0 // nothing received yet
	pageHave  = 1 // the memfd holds the page's bytes (final once the migration resumed)
	pageStale = 2 // written at the source after the pre-copy: wait for the push or fetch it
)

// pager is the destination's page server: it receives pages into the image's memfd and serves
// every fault of the guest's view from there, fetching from the source what it does not hold.
type pager struct {
	page, npages int
	img          []byte // the pager's own mapping of the memfd: not registered, written freely
	u            *uffd.UFFD
	base         uintptr // the guest's view, in the guest's address space
	src          PageSource
	lazy         bool // install only what the guest faults on
	crashAfter   uint64

	mu        sync.Mutex
	state     []uint8
	fetching  []bool
	installed []bool
	left      int  // pages not installed in the guest's view yet
	resumed   bool // the states are final: a pageHave page may be mapped into the guest

	resumeCh     chan struct{} // closed at the resume
	wanted       chan int      // faulted pages the pager does not hold yet
	ready        chan struct{} // pages became pageHave: wake the installer
	allInstalled chan struct{} // closed once every page is installed
	ended        atomic.Bool   // the stream ended: nothing more will be pushed
	endCh        chan struct{} // closed when the stream ends
	failOnce     sync.Once
	failed       chan struct{}
	failErr      error

	faults      atomic.Uint64
	onDemand    atomic.Int64
	demandWait  atomic.Int64
	demandCalls atomic.Int64
}

func (d *pager) fail(err error) {
	d.failOnce.Do(func() {
		d.failErr = err
		close(d.failed)
	})
}

// errGuestGone: the guest's memory is no longer there to map pages into.
var errGuestGone = errors.New("the guest's memory is gone")

// failure is the error the destination ends with: why, and how much it still missed. When the
// guest's memory vanished, the guest is exiting: its exit status and last words say why.
func (d *pager) failure(g *guestProc) error {
	err := d.failErr
	if errors.Is(err, errGuestGone) {
		err = g.died(err)
	}
	d.mu.Lock()
	missing := 0
	for _, st := range d.state {
		if st != pageHave {
			missing++
		}
	}
	d.mu.Unlock()
	return fmt.Errorf("%w; %d of %d pages never arrived, none was replaced by zeros", err, missing, d.npages)
}

func (d *pager) notify() {
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

// MaybeDestination runs the destination side of a migration and exits, if this process was
// started as one by Run (the destination's pager, or the guest the pager starts); otherwise it
// returns at once. Call it first thing in main (and in TestMain of tests that call Run).
func MaybeDestination() {
	if params := os.Getenv(envGuest); params != "" {
		os.Exit(guestMain(params))
	}
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

// guestProc is the guest process, as its parent the pager sees it.
type guestProc struct {
	cmd      *exec.Cmd
	conn     *net.UnixConn
	stderr   syncBuffer    // its error output, also copied to ours
	done     chan struct{} // closed when it has exited; waitErr is then set
	waitErr  error
	expected atomic.Bool // its exit is the normal end
}

// startGuest starts the guest: this program again, with the memfd and one end of a Unix socket.
// The guest dies with the pager (Pdeathsig), so a pager that fails or is killed never leaves a
// guest waiting for pages behind.
func startGuest(memfd, size, page int, mode Mode) (*guestProc, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socketpair", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "guest control"), os.NewFile(uintptr(fds[1]), "control")
	defer theirs.Close()
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, err
	}
	dup, err := unix.FcntlInt(uintptr(memfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		c.Close()
		return nil, os.NewSyscallError("fcntl", err)
	}
	memf := os.NewFile(uintptr(dup), "memory")
	defer memf.Close()
	self, err := os.Executable()
	if err != nil {
		c.Close()
		return nil, err
	}
	g := &guestProc{conn: c.(*net.UnixConn), done: make(chan struct{})}
	g.cmd = exec.Command(self)
	for _, kv := range os.Environ() {
		if !bytes.HasPrefix([]byte(kv), []byte(envDest+"=")) {
			g.cmd.Env = append(g.cmd.Env, kv)
		}
	}
	g.cmd.Env = append(g.cmd.Env, envGuest+"="+guestParams(size, page, mode))
	g.cmd.ExtraFiles = []*os.File{memf, theirs} // fds 3 and 4: guestFDMemory, guestFDControl
	g.cmd.Stdout = os.Stderr
	g.cmd.Stderr = io.MultiWriter(os.Stderr, &g.stderr)
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the child exits: keep this one
		// until the guest has exited.
		runtime.LockOSThread()
		if err := g.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		g.waitErr = g.cmd.Wait()
		close(g.done)
	}()
	if err := <-started; err != nil {
		g.conn.Close()
		return nil, fmt.Errorf("starting the guest: %w", err)
	}
	return g, nil
}

// syncBuffer is a bytes.Buffer safe for one writer and readers in other goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lastLine returns the last non-empty line written.
func (s *syncBuffer) lastLine() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	msg := bytes.TrimSpace(s.b.Bytes())
	if i := bytes.LastIndexByte(msg, '\n'); i >= 0 {
		msg = msg[i+1:]
	}
	return string(msg)
}

// kill ends the guest (if it still runs) and waits for it.
func (g *guestProc) kill() {
	g.cmd.Process.Kill()
	<-g.done
	g.conn.Close()
}

// died describes a guest that ended before the migration did. cause is how the pager
// noticed (a closed socket, say): the guest is exiting then, so died waits for its exit (a few
// seconds at most) to report its exit status and the last line of its error output.
func (g *guestProc) died(cause error) error {
	select {
	case <-g.done:
		if g.waitErr != nil {
			cause = g.waitErr
		} else {
			cause = fmt.Errorf("exit status 0 (%v)", cause)
		}
	case <-time.After(5 * time.Second):
	}
	return fmt.Errorf("the guest process ended before the migration did (%v): %s", cause, g.stderr.lastLine())
}

func runDestination(addr string) (destReport, error) {
	rep := destReport{FirstMismatch: -1}
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
	reg, err := alloc.Memfd("postcopy-image", size)
	if err != nil {
		return rep, err
	}
	d := &pager{page: page, npages: size / page, img: reg.Bytes(), left: size / page,
		resumeCh: make(chan struct{}), wanted: make(chan int, 1024), ready: make(chan struct{}, 1),
		allInstalled: make(chan struct{}), failed: make(chan struct{}), endCh: make(chan struct{})}
	defer func() {
		// Goroutines may still be writing into the mapping (the destination failed): they
		// check img under the lock.
		d.mu.Lock()
		d.img = nil
		reg.Close()
		d.mu.Unlock()
	}()
	d.lazy = os.Getenv(envLazy) != ""
	if n, err := strconv.Atoi(os.Getenv(envCrashAfter)); err == nil && n > 0 {
		d.crashAfter = uint64(n)
	}
	d.state = make([]uint8, d.npages)
	d.fetching = make([]bool, d.npages)
	d.installed = make([]bool, d.npages)

	g, err := startGuest(reg.Fd(), size, page, mode)
	if err != nil {
		return rep, err
	}
	ok := false
	defer func() {
		if !ok {
			// Killed by the kernel (SIGKILL), whatever state its threads are in; it holds
			// its userfaultfd open until it is gone, so none of its faults ever sees a
			// zero page.
			g.kill()
		}
	}()
	go func() {
		<-g.done
		if !g.expected.Load() {
			d.fail(g.died(g.waitErr))
		}
	}()
	if mode == PostCopy {
		if d.u, d.base, err = uffd.ReceiveFD(g.conn); err != nil {
			return rep, fmt.Errorf("receiving the guest's userfaultfd: %w", err)
		}
		defer d.u.Close()
		if url := os.Getenv(envHTTP); url != "" {
			d.src = HTTPSource(url, &http.Client{Timeout: demandTimeout})
		} else if d.src, err = DialSource(addr, page); err != nil {
			return rep, err
		}
		defer d.src.Close()
		serveDone := make(chan struct{})
		go func() {
			defer close(serveDone)
			d.serveFaults()
		}()
		defer func() { d.u.Close(); <-serveDone }()
		go d.fetcher()
	}

	// The stream runs in its own goroutine, so that a failure anywhere (the stream, a demand
	// fetch, the guest) ends the destination at once.
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
				d.mu.Lock()
				if d.img == nil { // the destination is ending
					d.mu.Unlock()
					return
				}
				switch d.state[pg] {
				case pageNone: // pre-copy (stop-and-copy: the copy)
					copy(d.img[int(pg)*page:], buf)
					d.state[pg] = pageHave
					precopied++
				case pageStale: // pushed after the resume
					copy(d.img[int(pg)*page:], buf)
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
				d.resumed = true
				d.mu.Unlock()
				close(d.resumeCh)
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
				close(d.endCh)
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
		return rep, d.failure(g)
	}
	// Resume the guest: from now on its faults are served.
	msg := make([]byte, 0, 5+4*len(stale))
	msg = append(msg, ctlResume)
	msg = binary.LittleEndian.AppendUint32(msg, uint32(len(stale)))
	for _, pg := range stale {
		msg = binary.LittleEndian.AppendUint32(msg, uint32(pg))
	}
	if _, err := g.conn.Write(msg); err != nil {
		d.fail(g.died(err))
	}
	if mode == PostCopy {
		if !d.lazy {
			go d.installer()
		}
	} else {
		close(d.allInstalled) // stop-and-copy: the guest maps the pages from the memfd itself
	}
	wait := func(chs ...chan struct{}) error {
		for _, ch := range chs {
			select {
			case <-ch:
			case <-d.failed:
				return d.failure(g)
			}
		}
		select {
		case <-d.failed:
			return d.failure(g)
		default:
			return nil
		}
	}
	if err := wait(streamDone, d.allInstalled); err != nil {
		return rep, err
	}
	rep.DoneNs = monotonic() // every page is in the guest's view: the migration is over
	if manifest == nil {
		return rep, errors.New("the source sent no checksums")
	}
	msg = append(msg[:0], ctlDone)
	for _, c := range manifest {
		msg = binary.LittleEndian.AppendUint32(msg, c)
	}
	if _, err := g.conn.Write(msg); err != nil {
		return rep, g.died(err)
	}
	gr, err := readGuestReport(g.conn)
	if err != nil {
		return rep, g.died(err)
	}
	g.expected.Store(true)
	ok = true
	<-g.done
	if g.waitErr != nil {
		return rep, g.died(g.waitErr)
	}
	g.conn.Close()
	rep.ResumeNs, rep.Touches, rep.TouchMean, rep.TouchMax = gr.ResumeNs, gr.Touches, gr.TouchMean, gr.TouchMax
	rep.Verified, rep.Mismatches, rep.FirstMismatch, rep.GCCycles = gr.Verified, gr.Mismatches, gr.FirstMismatch, gr.GCCycles
	rep.PreCopied, rep.Pushed = precopied, pushed
	rep.OnDemand = int(d.onDemand.Load())
	rep.DemandRequests = int(d.demandCalls.Load())
	rep.DemandWait = time.Duration(d.demandWait.Load())
	rep.Faults = d.faults.Load()
	if rep.Mismatches > 0 {
		return rep, fmt.Errorf("%d of %d pages differ from the source's final image (first: page %d)", rep.Mismatches, d.npages, rep.FirstMismatch)
	}
	return rep, nil
}

// serveFaults reads the guest's faults until the userfaultfd is closed. A page the pager holds
// (after the resume) is mapped at once; any other goes to the fetcher. It never waits for the
// network itself, so a slow fetch delays only the faults that need it.
func (d *pager) serveFaults() {
	msgs := make([]uffd.Msg, 64)
	for {
		n, err := d.u.ReadMessages(msgs)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				d.fail(fmt.Errorf("reading the guest's faults: %w", err))
			}
			return
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			if m.Event() != uffd.EventPagefault {
				continue
			}
			if d.faults.Add(1) == d.crashAfter {
				syscall.Kill(os.Getpid(), syscall.SIGKILL) // a pager that crashes (tests)
			}
			off := m.Address() - d.base
			if m.Address() < d.base || int(off) >= d.npages*d.page {
				d.fail(fmt.Errorf("a fault at %#x, outside the guest's image", m.Address()))
				return
			}
			pg := int(off) / d.page
			d.mu.Lock()
			have := d.resumed && d.state[pg] == pageHave
			d.mu.Unlock()
			if have {
				if err := d.install(pg, 1); err != nil {
					d.fail(err)
					return
				}
				continue
			}
			select {
			case d.wanted <- pg:
			case <-d.failed:
				return
			}
		}
	}
}

// install maps pages [pg, pg+n) of the memfd into the guest's view (UFFDIO_CONTINUE), which
// wakes the guest's threads waiting on them. A page mapped already (EEXIST: a fault and the
// installer raced) is skipped, and its waiters are woken: errors never wake anyone.
func (d *pager) install(pg, n int) error {
	addr := d.base + uintptr(pg*d.page)
	length := n * d.page
	for done := 0; done < length; {
		k, err := d.u.Continue(addr+uintptr(done), length-done, 0)
		done += k
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN):
		case errors.Is(err, unix.EEXIST):
			if err := d.u.Wake(addr+uintptr(done), d.page); err != nil {
				return fmt.Errorf("waking the guest: %w", err)
			}
			done += d.page
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH):
			return fmt.Errorf("mapping page %d into the guest: %w (%w)", pg+done/d.page, errGuestGone, err)
		default:
			return fmt.Errorf("mapping page %d into the guest: %w", pg+done/d.page, err)
		}
	}
	d.mu.Lock()
	for i := pg; i < pg+n; i++ {
		if !d.installed[i] {
			d.installed[i] = true
			d.left--
		}
	}
	if d.left == 0 {
		select {
		case <-d.allInstalled:
		default:
			close(d.allInstalled)
		}
	}
	d.mu.Unlock()
	return nil
}

// fetcher fetches from the source, after the resume, the pages the guest faulted on and the
// pager does not hold, then (once the push stream ended) every page still missing.
func (d *pager) fetcher() {
	select {
	case <-d.resumeCh:
	case <-d.failed:
		return
	}
	const maxRun, pullRun = 16, 512 // pages per fetch: around a fault, and pulling the rest
	endCh := d.endCh
	buf := make([]byte, pullRun*d.page)
	for {
		pg := -1
		select {
		case pg = <-d.wanted:
		case <-d.failed:
			return
		case <-d.allInstalled:
			return
		default:
		}
		limit := maxRun
		if pg < 0 {
			if !d.ended.Load() || d.lazy {
				select { // wait for a fault or the end of the stream
				case pg = <-d.wanted:
				case <-endCh:
					if d.lazy {
						endCh = nil // nothing to pull: wait for faults only
					}
					continue
				case <-d.failed:
					return
				case <-d.allInstalled:
					return
				}
			} else {
				limit = pullRun
				if pg = d.nextMissing(); pg < 0 {
					select { // everything is held: the installer finishes
					case pg = <-d.wanted:
					case <-d.allInstalled:
						return
					case <-d.failed:
						return
					}
				}
			}
		}
		if err := d.fetch(pg, limit, buf); err != nil {
			d.fail(err)
			return
		}
	}
}

// nextMissing returns the first page that is neither held nor being fetched, or -1.
func (d *pager) nextMissing() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for pg, st := range d.state {
		if st != pageHave && !d.fetching[pg] {
			return pg
		}
	}
	return -1
}

// fetch makes page pg available in the guest's view: at once if it is held, otherwise after
// fetching it, with the pages after it that are missing too (up to limit), from the source.
func (d *pager) fetch(pg, limit int, buf []byte) error {
	d.mu.Lock()
	if d.state[pg] == pageHave {
		d.mu.Unlock()
		return d.install(pg, 1)
	}
	n := 0
	for pg+n < d.npages && n < limit && d.state[pg+n] != pageHave && !d.fetching[pg+n] {
		d.fetching[pg+n] = true
		n++
	}
	d.mu.Unlock()
	if n == 0 {
		return nil // being fetched by this goroutine already: cannot happen, nothing to do
	}
	start := time.Now()
	err := d.src.ReadPages(buf[:n*d.page], int64(pg)*int64(d.page))
	d.demandWait.Add(int64(time.Since(start)))
	d.demandCalls.Add(1)
	if err != nil {
		return fmt.Errorf("fetching page %d: %w", pg, err)
	}
	d.mu.Lock()
	if d.img == nil { // the destination is ending
		d.mu.Unlock()
		return nil
	}
	for k := 0; k < n; k++ {
		d.fetching[pg+k] = false
		if d.state[pg+k] != pageHave { // a push may have brought it meanwhile: never write a held page
			copy(d.img[(pg+k)*d.page:(pg+k+1)*d.page], buf[k*d.page:])
			d.state[pg+k] = pageHave
			d.onDemand.Add(1)
		}
	}
	d.mu.Unlock()
	if d.lazy {
		n = 1 // the others wait, held, for their own faults
	}
	return d.install(pg, n)
}

// installer maps every page the pager holds into the guest's view as soon as the migration
// resumed and the page is final, 2 MiB per system call at most, until every page is mapped.
func (d *pager) installer() {
	const maxRun = 512
	for {
		d.mu.Lock()
		var runs [][2]int
		for pg := 0; pg < d.npages; {
			if d.installed[pg] || d.state[pg] != pageHave {
				pg++
				continue
			}
			end := pg
			for end < d.npages && end-pg < maxRun && !d.installed[end] && d.state[end] == pageHave {
				end++
			}
			runs = append(runs, [2]int{pg, end - pg})
			pg = end
		}
		d.mu.Unlock()
		for _, r := range runs {
			if err := d.install(r[0], r[1]); err != nil {
				d.fail(err)
				return
			}
		}
		select {
		case <-d.allInstalled:
			return
		default:
		}
		select {
		case <-d.ready:
		case <-d.allInstalled:
			return
		case <-d.failed:
			return
		}
	}
}
