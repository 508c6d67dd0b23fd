package mirror

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem/memtest"
	"github.com/mirrormem/mirrormem/uffd"
)

const (
	envCloseRun     = "MIRRORMEM_TEST_CLOSE_RUN"     // handler of one Close-while-faulting run
	envCloseWorkers = "MIRRORMEM_TEST_CLOSE_WORKERS" // goroutines faulting in it
)

// crashedOnFault reports whether a child's output is a Go program ended by a memory fault
// (SIGSEGV on a view that is gone, SIGBUS on a poisoned page).
func crashedOnFault(out string) bool {
	return strings.Contains(out, "unexpected fault address") &&
		(strings.Contains(out, "SIGSEGV") || strings.Contains(out, "SIGBUS"))
}

// Close while goroutines copy() pages of both views: each goroutine gets its page or the
// program ends on the fault (the view is gone, or the page poisoned), never a zero page and
// never a hang; with more faulting goroutines than GOMAXPROCS, Close must not wait for one of
// them. Each run is a subprocess with a timeout.
func TestCloseWhileFaulting(t *testing.T) {
	if h := os.Getenv(envCloseRun); h != "" {
		workers, _ := strconv.Atoi(os.Getenv(envCloseWorkers))
		closeWhileFaultingChild(t, h, workers)
		return
	}
	t.Parallel()
	runs := 6
	if testing.Short() || raceEnabled {
		runs = 2
	}
	for _, h := range outsideGo() {
		for _, workers := range []int{2, 2*runtime.GOMAXPROCS(0) + 2} {
			t.Run(fmt.Sprintf("%s/%d", h.name, workers), func(t *testing.T) {
				crashes := 0
				for i := 0; i < runs; i++ {
					out, err := runChild("TestCloseWhileFaulting", []string{envCloseRun + "=" + h.name, envCloseWorkers + "=" + strconv.Itoa(workers)}, 60*time.Second)
					switch {
					case errors.Is(err, context.DeadlineExceeded):
						t.Fatalf("run %d hung (killed after 60 s):\n%s", i, tail(out))
					case strings.Contains(string(out), "WRONG"):
						t.Fatalf("run %d read bytes that are not the source's:\n%s", i, tail(out))
					case err == nil:
					case crashedOnFault(string(out)):
						crashes++
					default:
						t.Fatalf("run %d: %v\n%s", i, err, tail(out))
					}
				}
				t.Logf("%d runs: %d ended on the fault of a goroutine touching a view after Close, %d completed", runs, crashes, runs-crashes)
			})
		}
	}
}

func closeWhileFaultingChild(t *testing.T, handler string, workers int) {
	n := 16 << 20
	if raceEnabled {
		n = 4 << 20 // the race detector slows copying many times over
	}
	page := alloc.PageSize()
	f, data := patternFile(t, n)
	r := shared(t, n)
	h := WithHandler(HandlerProcess)
	if handler == "native" {
		h = WithHandler(HandlerNative)
	}
	p, err := Mirror(r, ServeFaults(f), h, FaultAround(0))
	if err != nil {
		t.Fatal(err)
	}
	views := [][]byte{p.Original(), p.Mirror()}
	var touched atomic.Int64
	enough := make(chan struct{})
	var once sync.Once
	for w := 0; w < workers; w++ {
		go func() {
			buf := make([]byte, page)
			for pg := w; pg < n/page; pg += workers {
				off := pg * page
				copy(buf, views[pg%2][off:off+page]) // runtime assembly on an unfilled page
				for i := range buf {
					if buf[i] != data[off+i] {
						fmt.Printf("WRONG: page at %d through view %d byte %d: %#x, source %#x\n", off, pg%2, i, buf[i], data[off+i])
						os.Exit(3)
					}
				}
				if touched.Add(1) == 64 {
					once.Do(func() { close(enough) })
				}
			}
		}()
	}
	<-enough
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("closed")
}

func tail(out []byte) string {
	s := string(out)
	if len(s) > 4000 {
		s = "...\n" + s[len(s)-4000:]
	}
	return s
}

// The primary handler process dies holding a fault message it read but never resolved, for a
// fault taken inside a system call (which, unlike one in user mode, is not retried after a
// signal): the standby takes over and wakes every view, and the system call completes with the
// source's bytes.
func TestStandbyFinishesFaultInFlight(t *testing.T) {
	p, out, data := processServedPair(t)
	pids := p.FaultHandlerPids()
	if len(pids) != 2 {
		t.Fatalf("handler pids %v, want a primary and a standby", pids)
	}
	stopAndWait(t, pids[0])
	wrote := make(chan error, 1)
	go func() {
		_, err := out.WriteAt(p.Mirror()[3*4096:4*4096], 0) // the kernel faults on the view
		wrote <- err
	}()
	// Read the fault message as the primary would have, then kill it before it resolves.
	var msgs [4]uffd.Msg
	got := make(chan error, 1)
	go func() {
		k, err := p.s.faults.u.ReadMessages(msgs[:])
		if err == nil && (k != 1 || msgs[0].Event() != uffd.EventPagefault) {
			err = fmt.Errorf("read %d messages, the first %v: want one page fault", k, msgs[0].Event())
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no fault message within 30 s")
	}
	if err := unix.Kill(pids[0], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the write from the view waits forever: the standby did not wake the fault the dead primary had read")
	}
	b := make([]byte, 4096)
	if _, err := out.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if string(b) != string(data[3*4096:4*4096]) {
		t.Fatal("the write completed with bytes that are not the source's")
	}
}

// processServedPair returns a pair of 16 pages served from a pattern file by handler
// processes (one page per fault), the file's bytes, and a file to write views into; everything
// is released, and checked to leave nothing behind, when the test ends.
func processServedPair(t *testing.T) (*Pair, *os.File, []byte) {
	t.Helper()
	const n = 16 * 4096
	f, data := patternFile(t, n)
	out, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	t.Cleanup(unchanged(t))
	r := shared(t, n)
	t.Cleanup(func() { r.Close() })
	p, err := Mirror(r, ServeFaults(f), WithHandler(HandlerProcess), FaultAround(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, out, data
}

// stopAndWait stops process pid (SIGSTOP) and waits until the kernel reports it stopped.
func stopAndWait(t *testing.T, pid int) {
	t.Helper()
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for procState(pid) != "T" {
		if time.Now().After(deadline) {
			t.Fatalf("process %d not stopped after 20 s (state %q)", pid, procState(pid))
		}
		runtime.Gosched() // polling the kernel's account of the process
	}
}

// procState returns the state letter of process pid ("R", "S", "T", ...), "" if it is gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

// Close returns within a bounded time even when every handler process is stopped (SIGSTOP),
// and a system call blocked meanwhile in a fault on a view fails (EFAULT) instead of waiting
// for ever or reading zeros. Nothing is left behind: the stopped handlers are reaped.
func TestCloseWithStoppedHandlers(t *testing.T) {
	p, out, _ := processServedPair(t)
	loopSum(p.Original()[:4096])
	for _, pid := range p.FaultHandlerPids() {
		stopAndWait(t, pid)
	}
	wrote := make(chan error, 1)
	page := p.Mirror()[5*4096 : 6*4096]
	go func() {
		_, err := out.WriteAt(page, 0)
		wrote <- err
	}()
	waitBlockedFault(t, p)
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Close still waits for stopped handler processes after 60 s")
	}
	select {
	case err := <-wrote:
		if !errors.Is(err, unix.EFAULT) {
			t.Errorf("a write from the view blocked in a fault during Close: %v, want EFAULT", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("a write from the view still waits in its fault after Close")
	}
}

// waitBlockedFault waits until a fault message is pending on the pair's userfaultfd (a thread
// waits in a fault that nobody reads).
func waitBlockedFault(t *testing.T, p *Pair) {
	t.Helper()
	if !memtest.Readable(t, p.s.faults.u.Fd(), 30*time.Second) {
		t.Fatal("no fault pending after 30 s")
	}
}

const envKilledRun = "MIRRORMEM_TEST_KILLED_RUN" // the child of TestEveryHandlerKilled

// Every handler process is killed while more goroutines than GOMAXPROCS wait in faults inside
// copy(): no goroutine of the program can run, yet the program must end at once with a message
// naming the cause (a thread outside the Go scheduler does it), never hang. The child stops its
// handlers, prints their pids and starts the faulting goroutines; the parent waits
// until the child's threads sleep in the fault, then kills both handlers.
func TestEveryHandlerKilled(t *testing.T) {
	if os.Getenv(envKilledRun) != "" {
		everyHandlerKilledChild(t)
		return
	}
	t.Parallel()
	procs := runtime.GOMAXPROCS(0)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestEveryHandlerKilled$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envKilledRun+"=1", "GORACE=atexit_sleep_ms=0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pids [2]int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "handlers %d %d", &pids[0], &pids[1]); err == nil {
			break
		}
	}
	if pids[0] == 0 {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the child printed no handler pids; stderr:\n%s", stderr.String())
	}
	go io.Copy(io.Discard, stdout)
	// The child's goroutines sleep in the fault, each holding its P.
	deadline := time.Now().Add(60 * time.Second)
	for threadsInFault(cmd.Process.Pid) < procs {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("fewer than %d threads of the child wait in a fault after 60 s", procs)
		}
		time.Sleep(time.Millisecond) // polling the kernel's account of the child
	}
	for _, pid := range pids {
		unix.Kill(pid, unix.SIGKILL)
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("the program hung after every handler process was killed:\n%s", tail([]byte(stderr.String())))
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "every fault handler process of this program died") {
		t.Fatalf("child: %v, want exit status 2 and the guard's message; stderr:\n%s", err, tail([]byte(stderr.String())))
	}
}

func everyHandlerKilledChild(t *testing.T) {
	const n = 16 << 20
	r := shared(t, n)
	f, _ := patternFile(t, n)
	p, err := Mirror(r, ServeFaults(f), WithHandler(HandlerProcess), FaultAround(0))
	if err != nil {
		t.Fatal(err)
	}
	pids := p.FaultHandlerPids()
	for _, pid := range pids {
		stopAndWait(t, pid)
	}
	// Said before the goroutines start: once they fault, nothing of this program runs.
	fmt.Printf("handlers %d %d\n", pids[0], pids[1])
	views := [][]byte{p.Original(), p.Mirror()}
	for w := 0; w < runtime.GOMAXPROCS(0)+2; w++ {
		go func() {
			buf := make([]byte, 4096)
			off := w * 4096 * 8
			copy(buf, views[w%2][off:off+4096])
			fmt.Println("a page was served with every handler stopped")
			os.Exit(4)
		}()
	}
	select {}
}

// threadsInFault counts the threads of process pid asleep in a userfaultfd fault.
func threadsInFault(pid int) int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, _ := os.ReadDir(dir)
	n := 0
	for _, task := range tasks {
		if w, _ := os.ReadFile(dir + task.Name() + "/wchan"); string(w) == "handle_userfault" {
			n++
		}
	}
	return n
}
