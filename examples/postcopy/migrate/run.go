package migrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/mirror"
)

// Mode is the kind of migration.
type Mode int

const (
	// PostCopy: pre-copy every page while the workload runs, stop, resume the destination at
	// once, then fetch the pages written since the pre-copy on demand while the library's
	// background push makes every page resident.
	PostCopy Mode = iota
	// StopAndCopy: stop, copy every page, resume. The baseline.
	StopAndCopy
)

// String names the mode.
func (m Mode) String() string {
	switch m {
	case PostCopy:
		return "post-copy"
	case StopAndCopy:
		return "stop-and-copy"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config describes a migration. The zero value of a field means its default.
type Config struct {
	Mode            Mode
	ImageSize       int     // bytes of the source image (default 256 MiB), rounded up to pages
	HotFraction     float64 // share of the pages that take 90% of the workload's writes (default 0.05)
	WritesPerSecond int     // the source workload's write rate (default 200000)
	DestTouches     int     // pages the destination workload reads after resuming (default 4096)
	Seed            uint64  // workload randomness (default 1)
	// DemandOverHTTP makes the destination fetch pages on demand with HTTP Range requests
	// (mirror.HTTPSource) from an HTTP server the source runs on loopback, instead of from its
	// page server (mirror.TCPSource): the path a restore from an object store takes.
	DemandOverHTTP bool
	// Lazy makes the destination populate nothing in the background: every page comes in on
	// a fault of its workload, one page per fault (no fault-around), and the workload reads
	// every page (DestTouches is raised to the number of pages). The migration ends when the
	// workload has touched every page.
	Lazy bool
	// NoPush makes the destination run no background push: every page written after the
	// pre-copy then comes on demand, fetched by its fault handler for a fault of its workload
	// or, once the stream ended, of Pair.Populate.
	NoPush bool
	// PushRate caps what the destination's background push (mirror.Restore with Push) reads,
	// from its store and the source together, in bytes per second (default 1 GiB/s; negative:
	// no cap). The push starts at the resume (Pair.StartPush), once the store is complete.
	PushRate int64
	// FailSourceAfter > 0 makes the source drop its connections once it has sent that many
	// pages after the resume (for faults or the push), as a crashed source would: the
	// migration must fail with an error.
	FailSourceAfter int
	// Stderr receives the destination process's error output (default os.Stderr).
	Stderr io.Writer
	// DestGC makes the destination's workload force garbage collections in a loop while it
	// reads pages that may not have arrived yet with copy(). A goroutine that faults inside
	// runtime assembly cannot be stopped by the collector, so a fault server in the
	// destination's own Go runtime would never run and it would hang; the library's handler
	// is another process, so it cannot.
	DestGC bool
	// killHandlers > 0 makes the destination kill (SIGKILL) that many of its fault handler
	// processes after its workload's first 16 reads: with 1, the standby takes over; with 2,
	// the destination must end with a message, never run on with missing pages.
	killHandlers int
	// destCrash makes the destination exit (status 3) right after it resumed.
	destCrash bool
	// Timeout bounds the whole migration (default 2 minutes): past it the destination process
	// is killed and Run fails, rather than wait for ever.
	Timeout time.Duration
}

func (c *Config) defaults() error {
	if c.ImageSize == 0 {
		c.ImageSize = 256 << 20
	}
	if c.HotFraction == 0 {
		c.HotFraction = 0.05
	}
	if c.WritesPerSecond == 0 {
		c.WritesPerSecond = 200000
	}
	if c.DestTouches == 0 {
		c.DestTouches = 4096
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.FailSourceAfter == 0 {
		c.FailSourceAfter = -1
	}
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Minute
	}
	switch {
	case c.PushRate == 0:
		c.PushRate = 1 << 30
	case c.PushRate < 0:
		c.PushRate = 0 // the library's "no cap"
	}
	switch {
	case c.ImageSize < 0:
		return fmt.Errorf("migrate: ImageSize %d: must be positive", c.ImageSize)
	case c.HotFraction < 0 || c.HotFraction > 1:
		return fmt.Errorf("migrate: HotFraction %v: must be in (0, 1]", c.HotFraction)
	case c.WritesPerSecond < 0 || c.DestTouches < 0:
		return fmt.Errorf("migrate: WritesPerSecond %d and DestTouches %d must not be negative", c.WritesPerSecond, c.DestTouches)
	case c.Mode != PostCopy && c.Mode != StopAndCopy:
		return fmt.Errorf("migrate: unknown mode %d", int(c.Mode))
	}
	return nil
}

// Report is what a migration measured.
type Report struct {
	Mode          Mode
	Demand        string // how faults fetched pages: "TCP" or "HTTP Range"
	ImageBytes    int
	PageSize      int
	Pages         int
	SourceWrites  int64         // writes of the source workload before the stop
	DirtyPages    int           // pages written after the start of the pre-copy: resent
	PreCopied     int           // pages the destination took from the pre-copy (stop-and-copy: all)
	Fetched       int           // dirty pages the destination fetched from the source after the resume
	Refetched     int           // fetches of a page fetched before (a fault and the push racing for it)
	FetchedClean  int           // fetches of pages the destination's store held (none: the store serves them)
	Requests      int           // requests to the source's page server (or HTTP server) after the resume
	Pushed        int           // pages the background push filled (the library's Restore); faults filled the others
	BytesSent     int64         // bytes the source sent, every connection
	PreCopyTime   time.Duration // the pre-copy, while the workload ran
	Downtime      time.Duration // workload stopped at the source until running at the destination
	Total         time.Duration // start until every page is resident at the destination
	Touches       int           // pages the destination workload read after resuming
	TouchMean     time.Duration // mean time of such a read (a fault or not)
	TouchMax      time.Duration
	DestFaults    uint64 // faults of the destination's memory served by its fault handler process
	VerifiedPages int    // pages whose checksum matched the source's final image
	DestGCCycles  int64  // garbage collections forced at the destination (DestGC)
}

// String formats the report in a few lines for people.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s of %d MiB (%d pages)", r.Mode, r.ImageBytes>>20, r.Pages)
	if r.Mode == PostCopy {
		fmt.Fprintf(&b, ", pages on demand over %s", r.Demand)
	}
	b.WriteString(":\n")
	fmt.Fprintf(&b, "  downtime %v, total %v", r.Downtime.Round(time.Microsecond), r.Total.Round(time.Millisecond))
	if r.Mode == PostCopy {
		fmt.Fprintf(&b, " (pre-copy %v while the workload ran)", r.PreCopyTime.Round(time.Millisecond))
	}
	if r.Mode == PostCopy {
		fmt.Fprintf(&b, "\n  sent %.1f MiB; pages: %d pre-copied, %d dirty after it, fetched in %d requests (%d fetched twice); %d pages filled by the push\n",
			float64(r.BytesSent)/(1<<20), r.PreCopied, r.DirtyPages, r.Requests, r.Refetched, r.Pushed)
		fmt.Fprintf(&b, "  destination: %d faults served by its handler process; it read %d pages right after resuming (mean %v, worst %v per page)\n",
			r.DestFaults, r.Touches, r.TouchMean.Round(time.Microsecond/10), r.TouchMax.Round(time.Microsecond))
	} else {
		fmt.Fprintf(&b, "\n  sent %.1f MiB; pages: %d copied while the workload was stopped\n", float64(r.BytesSent)/(1<<20), r.PreCopied)
	}
	fmt.Fprintf(&b, "  verified: %d of %d pages match the source's final image", r.VerifiedPages, r.Pages)
	return b.String()
}

// Run migrates a freshly made image from this process (the source) to a destination process,
// the running program started again (see MaybeDestination), over TCP on loopback, and returns
// what it measured. It fails if the destination does not end with every page equal to the
// source's final image.
func Run(cfg Config) (Report, error) {
	if os.Getenv(envDest) != "" {
		return Report{}, errors.New("migrate: Run called in a destination process: the program must call migrate.MaybeDestination first thing in main (and in TestMain)")
	}
	if err := cfg.defaults(); err != nil {
		return Report{}, err
	}
	s, err := newSource(cfg)
	if err != nil {
		return Report{}, err
	}
	defer s.close()
	if cfg.Lazy {
		cfg.DestTouches = max(cfg.DestTouches, s.npages)
	}
	rep := Report{Mode: cfg.Mode, Demand: "TCP", ImageBytes: len(s.img), PageSize: s.page, Pages: s.npages}
	if cfg.DemandOverHTTP {
		rep.Demand = "HTTP Range"
	}
	if cfg.Mode == PostCopy {
		if err := s.pair.TrackDirty(0); err != nil {
			return rep, fmt.Errorf("migrate: dirty tracking: %w", err)
		}
	}
	err = s.migrate(cfg, &rep)
	return rep, err
}

// migrate starts the destination, runs the stream with it, and fills rep from what both
// sides measured.
func (s *source) migrate(cfg Config, rep *Report) error {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer tcp.Close()
	ln := countingListener{tcp, &s.sent}
	demandEnv, stopDemand, err := s.serveDemand(cfg)
	if err != nil {
		return err
	}
	defer stopDemand()
	cmd, err := destCommand(cfg, envDest+"="+ln.Addr().String(), demandEnv)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	cmd.Stdout = &out

	go s.workload()
	defer s.stop() // before s.close, deferred by Run: the workload must not outlive the image
	startNs := monotonic()
	exited, err := startDestination(cmd, cfg.Timeout)
	if err != nil {
		return err
	}
	waited := false
	defer func() {
		if !waited { // an early return: the destination must not outlive Run
			cmd.Process.Kill()
			<-exited
		}
	}()
	stream, err := acceptStream(ln, exited)
	if err != nil {
		waited = true // acceptStream received the exit
		return err
	}
	defer stream.Close()
	preCopy, stopNs, dirty, serr := s.stream(stream, cfg.Mode)
	rep.PreCopyTime, rep.DirtyPages, rep.SourceWrites = preCopy, dirty, s.writes.Load()
	if serr != nil {
		stream.Close() // the destination learns at once; its own error says more than ours
	}
	select {
	case <-s.dropConns:
		stream.Close() // the simulated crash: the destination sees its connections close
	default:
	}
	werr := <-exited
	waited = true
	rep.BytesSent = s.sent.Load()
	return s.report(rep, out.Bytes(), werr, serr, startNs, stopNs)
}

// acceptStream waits for the destination to dial the stream, its one connection to ln.
func acceptStream(ln net.Listener, exited <-chan error) (net.Conn, error) {
	conns := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			conns <- c
		}
	}()
	select {
	case c := <-conns:
		return c, nil
	case err := <-exited:
		return nil, fmt.Errorf("migrate: destination exited before connecting (%v): does the program call migrate.MaybeDestination first thing in main?", err)
	}
}

// report fills rep from the destination's report (out, its standard output) and the source's
// counts, and returns the migration's error: the destination's (werr, its exit), the stream's
// (serr), or a page not verified.
func (s *source) report(rep *Report, out []byte, werr, serr error, startNs, stopNs int64) error {
	var dr destReport
	if jerr := json.Unmarshal(bytes.TrimSpace(out), &dr); jerr != nil {
		return fmt.Errorf("migrate: the destination ended without a report (%v): its error output says why", werr)
	}
	rep.Fetched, rep.Refetched, rep.FetchedClean = s.fetched()
	rep.PreCopied, rep.Pushed, rep.Requests = dr.PreCopied, dr.Pushed, int(s.requests.Load())
	rep.Touches, rep.TouchMean, rep.TouchMax, rep.DestFaults, rep.VerifiedPages = dr.Touches, dr.TouchMean, dr.TouchMax, dr.Faults, dr.Verified
	rep.DestGCCycles, rep.Downtime, rep.Total = dr.GCCycles, time.Duration(dr.ResumeNs-stopNs), time.Duration(dr.DoneNs-startNs)
	if dr.Err != "" || werr != nil {
		return fmt.Errorf("migrate: destination: %s (%v)", dr.Err, werr)
	}
	if serr != nil {
		return serr
	}
	if rep.VerifiedPages != rep.Pages {
		return errors.New("migrate: not every page was verified")
	}
	return nil
}

// startDestination starts the destination process and returns a channel that receives its
// exit, which an error names the timeout of if the process was killed for taking longer.
func startDestination(cmd *exec.Cmd, timeout time.Duration) (<-chan error, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("migrate: start destination: %w", err)
	}
	var timedOut atomic.Bool
	killer := time.AfterFunc(timeout, func() {
		timedOut.Store(true)
		cmd.Process.Kill()
	})
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		killer.Stop()
		if timedOut.Load() {
			err = fmt.Errorf("the destination did not finish within %v and was killed: %v", timeout, err)
		}
		exited <- err
	}()
	return exited, nil
}

// destCommand returns the destination process: this program again, told what to do in its
// environment (see MaybeDestination).
func destCommand(cfg Config, env ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(append(os.Environ(), env...),
		envTouches+"="+strconv.Itoa(cfg.DestTouches), envSeed+"="+strconv.FormatUint(cfg.Seed, 10),
		envPushRate+"="+strconv.FormatInt(cfg.PushRate, 10))
	for _, o := range []struct {
		on bool
		kv string
	}{
		{cfg.DestGC, envGC + "=1"}, {cfg.Lazy, envLazy + "=1"}, {cfg.NoPush, envNoPush + "=1"}, {cfg.destCrash, envDestCrash + "=1"},
		{cfg.killHandlers > 0, envKillHandlers + "=" + strconv.Itoa(cfg.killHandlers)},
	} {
		if o.on {
			cmd.Env = append(cmd.Env, o.kv)
		}
	}
	cmd.Stderr = cfg.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

// serveDemand starts what the destination fetches pages on demand from: the source's page
// server (mirror.ServePages), or an HTTP server of the image. It returns the destination's
// environment entry that names it, and a function that stops it.
func (s *source) serveDemand(cfg Config) (env string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	counted := countingListener{ln, &s.sent}
	if cfg.DemandOverHTTP {
		hs := &http.Server{Handler: s.httpHandler()}
		go hs.Serve(counted)
		return envHTTP + "=http://" + ln.Addr().String() + "/image", func() { hs.Close() }, nil
	}
	served, ended := make(chan error, 1), make(chan struct{})
	go func() { served <- mirror.ServePages(counted, pageReader{s}, int64(len(s.img))) }()
	go func() {
		select {
		case <-s.dropConns: // the simulated crash
		case <-ended:
		}
		ln.Close() // ServePages closes its connections and returns
	}()
	return envPages + "=" + ln.Addr().String(), func() { close(ended); <-served }, nil
}

func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// countingListener counts the bytes written to the connections it accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, l.n}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}
