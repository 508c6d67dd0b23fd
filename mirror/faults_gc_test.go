package mirror

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/internal/gcstress"
)

const (
	envGCRun    = "MIRRORMEM_TEST_GC_RUN"   // region size of one no-hang run
	envGCProc   = "MIRRORMEM_TEST_GC_PROC"  // the no-hang run uses HandlerProcess
	envWatchdog = "MIRRORMEM_TEST_WATCHDOG" // run the deliberate deadlock
	envGCNamed  = "MIRRORMEM_TEST_GC_NAMED" // the no-hang run serves a named source: "computed", or an HTTP URL
)

// runChild runs test in a subprocess with env and a timeout; it returns the output and the
// error of the run (context.DeadlineExceeded for a timeout: a hang).
func runChild(test string, env []string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(append(os.Environ(), env...), strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return out, ctx.Err()
	}
	return out, err
}

// The acceptance test of fault serving: a region served from a file, its pages first touched
// with copy() (runtime assembly) through the original or the mirror while another goroutine
// forces garbage collection in a loop. A goroutine handler in this process hangs here in about
// half of all runs; the handlers outside Go must never. 50 runs of a 64 MiB region, in 10
// subprocesses (5 runs each: a fresh region, pair, handler and collector loop per run) with a
// timeout, two at a time; in cgo builds the handler process gets 50 runs of 16 MiB of its own
// (the default there is the C thread); a quarter of the size under the race detector, which
// slows copying too much for CI; 10 runs of 16 MiB with -short.
func TestNoHangUnderGC(t *testing.T) {
	const perProcess = 5
	if os.Getenv(envHTTPServer) != "" {
		serveComputedUntilEOF(t)
		return
	}
	if v := os.Getenv(envGCRun); v != "" {
		size, _ := strconv.Atoi(v)
		var opts []Option
		if os.Getenv(envGCProc) != "" {
			opts = append(opts, WithHandler(HandlerProcess))
		}
		for i := 0; i < perProcess; i++ {
			src, data := noHangSource(t, size, os.Getenv(envGCNamed))
			noHangRun(t, size, src, data, opts...)
		}
		return
	}
	t.Parallel() // mostly waits for its subprocesses: overlap it with the bounce test
	t.Run("default", func(t *testing.T) { t.Parallel(); noHangRuns(t, 64<<20, 50, nil) })
	if fault.NativeAvailable {
		// The default handler is the C thread; the handler process gets its own 50 runs,
		// of 16 MiB (a quarter of the pages: the handler is the same code for every page,
		// what matters is many runs under GC, and CI time is bounded).
		t.Run("process", func(t *testing.T) { t.Parallel(); noHangRuns(t, 16<<20, 50, []string{envGCProc + "=1"}) })
	}
	// Sources that are Go code, registered and served by a handler process, in either build:
	// computed bytes, and the same bytes from an HTTP server (in this process, which does not
	// fault) through the library's HTTP range source. 10 runs each; the 50 of the acceptance
	// criterion with MIRRORMEM_ACCEPTANCE=1 (as CI runs them).
	named := 10
	if os.Getenv(envAcceptance) != "" {
		named = 50
	}
	t.Run("named-computed", func(t *testing.T) {
		t.Parallel()
		noHangRuns(t, 64<<20, named, []string{envGCNamed + "=computed"})
	})
	// The HTTP server runs in a process of its own: a server in this test process would share
	// its Ps with other tests, some of which hold goroutines in faults on purpose, and its
	// answers could then wait long enough to look like a hang of the runs it serves.
	url := startComputedServer(t)
	t.Run("named-http", func(t *testing.T) {
		t.Parallel()
		noHangRuns(t, 64<<20, named, []string{envGCNamed + "=" + url})
	})
}

// envHTTPServer makes TestNoHangUnderGC serve computedHandler until its standard input ends.
const envHTTPServer = "MIRRORMEM_TEST_HTTP_SERVER"

// startComputedServer starts this test binary as an HTTP server of computed objects and
// returns its URL; the server ends with the test.
func startComputedServer(t *testing.T) string {
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoHangUnderGC$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHTTPServer+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("the HTTP server process: %v", err)
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "URL=")
	if err != nil || !ok {
		t.Fatalf("the HTTP server process said %q (%v), want URL=...", line, err)
	}
	go io.Copy(io.Discard, stdout)
	return url
}

// serveComputedUntilEOF is the HTTP server process of startComputedServer.
func serveComputedUntilEOF(t *testing.T) {
	srv := httptest.NewServer(computedHandler())
	defer srv.Close()
	fmt.Printf("URL=%s\n", srv.URL)
	io.Copy(io.Discard, os.Stdin)
}

// envAcceptance asks for the acceptance criteria in full (more runs of the no-hang test).
const envAcceptance = "MIRRORMEM_ACCEPTANCE"

// noHangSem bounds the no-hang subprocesses running at once, across subtests: each forces
// garbage collection in a loop, and more of them than CPUs measure only the machine's load.
var noHangSem = make(chan struct{}, 2)

// computedHandler serves computedSource objects over HTTP, with range support and a strong
// ETag: GET /computed/SEED/SIZE.
func computedHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var seed uint64
		var size int64
		if _, err := fmt.Sscanf(r.URL.Path, "/computed/%d/%d", &seed, &size); err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("ETag", fmt.Sprintf("\"%d-%d\"", seed, size))
		http.ServeContent(w, r, "", time.Time{}, io.NewSectionReader(computedSource{seed: seed, size: size}, 0, size))
	})
}

// noHangSource returns the source of one no-hang run and the bytes it must serve: a file by
// default, or a named source ("computed", or an HTTP URL serving the computed bytes).
func noHangSource(t *testing.T, size int, named string) (io.ReaderAt, []byte) {
	if named == "" {
		return patternFile(t, size)
	}
	cs, data := computed(7, size)
	if named == "computed" {
		return NamedSource(computedName, computedConfig(cs.seed, cs.size, false)), data
	}
	return HTTPSource(fmt.Sprintf("%s/computed/%d/%d", named, cs.seed, cs.size), HTTPOptions{}), data
}

// noHangRuns runs TestNoHangUnderGC's runs of size bytes in subprocesses with env.
func noHangRuns(t *testing.T, size, runs int, env []string) {
	const perProcess = 5
	if raceEnabled {
		size = min(size/4, 16<<20) // the race detector slows copying many times over
	}
	if testing.Short() {
		runs, size = 10, 16<<20
	}
	var (
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
		sem      = noHangSem
	)
	for i := 0; i < runs/perProcess; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			out, err := runChild("TestNoHangUnderGC", append([]string{envGCRun + "=" + strconv.Itoa(size)}, env...), 2*time.Minute)
			if err == nil && strings.Contains(string(out), "--- PASS: TestNoHangUnderGC") {
				return
			}
			what := fmt.Sprintf("subprocess %d: %v", i, err)
			if errors.Is(err, context.DeadlineExceeded) {
				what = fmt.Sprintf("subprocess %d: HUNG (killed after 2 minutes)", i)
			}
			mu.Lock()
			failures = append(failures, what+"\n"+string(out))
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d runs failed:\n%s", len(failures), runs, strings.Join(failures, "\n"))
	}
	t.Logf("%d runs of %d MiB in %d subprocesses: every run completed", runs, size>>20, runs/perProcess)
}

func noHangRun(t *testing.T, size int, src io.ReaderAt, data []byte, opts ...Option) {
	r := shared(t, size)
	p, closePair := mirrored(t, r, append([]Option{ServeFaults(src)}, opts...)...)
	defer closePair()
	stop := gcstress.Loop()
	buf := make([]byte, 4096)
	views := [2][]byte{p.Original(), p.Mirror()}
	for off := 0; off < size; off += 4096 {
		// Which view first touches the page: both, in runs of varying length.
		v := views[(off/4096*7/5+off/(1<<20))%2]
		copy(buf, v[off:off+4096])
		if !bytes.Equal(buf, data[off:off+4096]) {
			t.Fatalf("page at %d differs from the source", off)
		}
	}
	stop()
	if !bytes.Equal(p.Original(), data) || !bytes.Equal(p.Mirror(), data) {
		t.Fatal("views differ from the source")
	}
	o, m := p.FaultStats()
	if o.Missing == 0 || m.Missing == 0 {
		t.Fatalf("both views must have served missing faults: original %+v, mirror %+v", o, m)
	}
	t.Logf("%v handler: original %+v, mirror %+v", p.FaultHandler(), o, m)
}

// blockedReader is a Go source that never answers until released.
type blockedReader struct {
	called  chan struct{}
	once    sync.Once
	release chan struct{}
}

func (b *blockedReader) ReadAt(p []byte, off int64) (int, error) {
	b.once.Do(func() { close(b.called) })
	<-b.release
	return 0, io.EOF
}

// The deadlock of an in-process Go server, made deliberately: a goroutine faults inside copy()
// on a page whose (Go) source does not answer, and the program then collects garbage. The
// collector waits for the goroutine forever; the watchdog must abort the process with a
// message that names the cause and the fix, instead of letting it hang.
func TestWatchdogCatchesGCDeadlock(t *testing.T) {
	if !fault.NativeAvailable {
		t.Skip("the watchdog is a C thread (cgo); without cgo a Go source is refused (TestServeFaultsChoosesHandler)")
	}
	if os.Getenv(envWatchdog) != "" {
		src := &blockedReader{called: make(chan struct{}), release: make(chan struct{})}
		r := shared(t, 1<<20)
		p, err := Mirror(r, ServeFaults(src), WithHandler(HandlerGo), Watchdog(500*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			buf := make([]byte, 4096)
			copy(buf, p.Original()) // the forbidden access: runtime.memmove on an unfilled page
		}()
		<-src.called
		runtime.GC() // never returns: the world cannot stop
		t.Fatal("the collector finished: the deliberate deadlock did not happen")
	}
	out, err := runChild("TestWatchdogCatchesGCDeadlock", []string{envWatchdog + "=1"}, time.Minute)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the process hung, the watchdog did not fire:\n%s", out)
	}
	if err == nil {
		t.Fatalf("the process exited normally:\n%s", out)
	}
	for _, want := range []string{"DEADLOCK", "copy", "Populate", "thread(s) wait in a page fault"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the watchdog's message lacks %q:\n%s", want, out)
		}
	}
}
