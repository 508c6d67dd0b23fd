package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/uffd"
)

// The fault-injection suite: handlers are killed, stopped and resumed, pairs closed and
// sources cut short at random moments while goroutines touch pages, hundreds of times. Every
// time the program must complete or end loudly, every byte read must be the source's, and
// nothing may be left behind.

const (
	envInjectSeed = "MIRRORMEM_INJECT_SEED"     // replays the random choices of a run
	envInjectRun  = "MIRRORMEM_TEST_INJECT_RUN" // a child run: action/handler/seed
	injectStream  = 0x6d6972726f726d65          // second word of every PCG seed
	injectProcs   = 6                           // GOMAXPROCS during the in-process runs
	hangLimit     = 60 * time.Second            // a run that takes longer hangs
	everyDiedMsg  = "every fault handler process of this program died"
)

// injectPlan is how many injections of each kind a run makes.
type injectPlan struct {
	lifecycles, lifecycleIters int // in-process pairs with process handlers, iterations each
	truncations                int // in-process truncations, shared among the handler kinds
	killBoth, closes           int // subprocess runs: every handler killed; Close, per handler kind of a cgo build
}

func planFor(short bool) injectPlan {
	switch {
	case short:
		return injectPlan{lifecycles: 2, lifecycleIters: 4, truncations: 4, killBoth: 2, closes: 2}
	case raceEnabled:
		// Every subprocess and handler process is a race-detector build, slow to start.
		return injectPlan{lifecycles: 24, lifecycleIters: 9, truncations: 64, killBoth: 6, closes: 7}
	}
	return injectPlan{lifecycles: 24, lifecycleIters: 9, truncations: 60, killBoth: 10, closes: 10}
}

// tally counts injections by action and outcome, and a few page counters.
type tally struct {
	mu      sync.Mutex
	actions map[string]map[string]int
	pages   map[string]int
}

func (c *tally) add(action, outcome string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.actions[action] == nil {
		c.actions[action] = map[string]int{}
	}
	c.actions[action][outcome]++
}

func (c *tally) count(what string, n int) {
	c.mu.Lock()
	c.pages[what] += n
	c.mu.Unlock()
}

func (c *tally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	var parts []string
	for a, outs := range c.actions {
		sum := 0
		var each []string
		for o, k := range outs {
			sum += k
			each = append(each, fmt.Sprintf("%s %d", o, k))
		}
		sort.Strings(each)
		total += sum
		parts = append(parts, fmt.Sprintf("%s %d (%s)", a, sum, strings.Join(each, ", ")))
	}
	sort.Strings(parts)
	var pages []string
	for w, k := range c.pages {
		pages = append(pages, fmt.Sprintf("%s %d", w, k))
	}
	sort.Strings(pages)
	return fmt.Sprintf("%d injections: %s; pages: %s", total, strings.Join(parts, "; "), strings.Join(pages, ", "))
}

func TestFaultInjection(t *testing.T) {
	if spec := os.Getenv(envInjectRun); spec != "" {
		injectChild(t, spec)
		return
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(envInjectSeed); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envInjectSeed, v, err)
		}
		seed = s
	}
	t.Logf("seed %d (replay the same choices with %s=%d)", seed, envInjectSeed, seed)
	rng := rand.New(rand.NewPCG(seed, injectStream))
	plan := planFor(testing.Short())
	c := &tally{actions: map[string]map[string]int{}, pages: map[string]int{}}
	start := time.Now()

	// Goroutines blocked in a fault inside copy() keep their P: leave Ps for the injector.
	if old := runtime.GOMAXPROCS(0); old < injectProcs {
		runtime.GOMAXPROCS(injectProcs)
		defer runtime.GOMAXPROCS(old)
	}
	kinds := outsideGo()
	t.Run("lifecycle", func(t *testing.T) {
		for i := 0; i < plan.lifecycles && !t.Failed(); i++ {
			kill := [2]string{"kill-primary", "kill-standby"}[i%2]
			injectLifecycle(t, rand.New(rand.NewPCG(rng.Uint64(), injectStream)), c, plan.lifecycleIters, kill)
		}
	})
	t.Run("truncate", func(t *testing.T) {
		avail, err := uffd.Available()
		if err != nil || avail&uffd.FeaturePoison == 0 {
			t.Skipf("truncation not injected: UFFDIO_POISON unavailable (%v): a failing source aborts the process", err)
		}
		for i := 0; i < plan.truncations && !t.Failed(); i++ {
			// Two native runs for one of the handler process where there is a choice (five
			// under the race detector): a pair served by processes costs two process starts.
			h, every := kinds[len(kinds)-1], 3
			if raceEnabled {
				every = 6
			}
			if len(kinds) > 1 && i%every != every-1 {
				h = kinds[0]
			}
			injectTruncate(t, rand.New(rand.NewPCG(rng.Uint64(), injectStream)), c, h)
		}
	})
	t.Run("subprocess", func(t *testing.T) {
		var runs []string
		for i := 0; i < plan.killBoth; i++ {
			runs = append(runs, fmt.Sprintf("kill-both/process/%d", rng.Uint64()))
		}
		for i := 0; i < 2*plan.closes; i++ { // shared among the handler kinds of this build
			runs = append(runs, fmt.Sprintf("close/%s/%d", kinds[i%len(kinds)].name, rng.Uint64()))
		}
		injectChildren(t, c, runs)
	})
	t.Logf("%s; %.1f s", c, time.Since(start).Seconds())
}

// injectPair is a pair served from a pattern file, shaped at random.
type injectPair struct {
	p      *Pair
	r      *alloc.Region
	f      *os.File
	data   []byte
	views  [][]byte // every view, and the region's own memory when Adjacent had to move it
	n      int
	page   int
	desc   string
	around int // the fault-around cap
	closed bool
}

func newInjectPair(t testing.TB, rng *rand.Rand, h handlerCase, f *os.File, data []byte) *injectPair {
	t.Helper()
	n := len(data)
	ip := &injectPair{f: f, data: data, n: n, page: alloc.PageSize()}
	if rng.IntN(2) == 0 {
		ip.around = DefaultFaultAround
	}
	nviews, adjacent := 2+rng.IntN(2), rng.IntN(4) == 0
	var err error
	if ip.r, err = alloc.Shared(n); err != nil {
		t.Fatal(err)
	}
	opts := []Option{ServeFaults(f), h.opt, FaultAround(ip.around), Views(nviews)}
	if adjacent {
		opts = append(opts, Adjacent())
	}
	if ip.p, err = Mirror(ip.r, opts...); err != nil {
		ip.r.Close()
		t.Fatal(err)
	}
	for i := 0; i < ip.p.NumViews(); i++ {
		ip.views = append(ip.views, ip.p.View(i))
	}
	if &ip.r.Bytes()[0] != &ip.p.Original()[0] {
		ip.views = append(ip.views, ip.r.Bytes())
	}
	ip.desc = fmt.Sprintf("%s handler, %d KiB, FaultAround(%d), %d views (adjacent %v)", h.name, n>>10, ip.around, len(ip.views), adjacent)
	return ip
}

// close closes the pair, then its region; a second call does nothing.
func (ip *injectPair) close() error {
	if ip.closed {
		return nil
	}
	ip.closed = true
	err := ip.p.Close()
	return errors.Join(err, ip.r.Close())
}

// touch is one page read through one view.
type touch struct{ pg, view int }

// planTouches shares the pages [lo, lo+npages) among the goroutines, each a contiguous block,
// read in order or shuffled, through one view per goroutine or a random view per page.
func planTouches(rng *rand.Rand, lo, npages, nviews, workers int) [][]touch {
	plans := make([][]touch, workers)
	inOrder, oneView := rng.IntN(2) == 0, rng.IntN(2) == 0
	for w := range plans {
		v := rng.IntN(nviews)
		for pg := lo + w*npages/workers; pg < lo+(w+1)*npages/workers; pg++ {
			if !oneView {
				v = rng.IntN(nviews)
			}
			plans[w] = append(plans[w], touch{pg, v})
		}
		if !inOrder {
			rng.Shuffle(len(plans[w]), func(i, j int) { plans[w][i], plans[w][j] = plans[w][j], plans[w][i] })
		}
	}
	return plans
}

// touching is goroutines reading pages; the one that completes the k-th touch closes reached
// (and calls atK, if set). The injector waits for reached: the random moment is a number of
// pages touched, never a time.
type touching struct {
	touched  atomic.Int64
	finished atomic.Int64 // goroutines done
	reached  chan struct{}
	done     chan struct{}
	errOnce  sync.Once
	err      error
}

func startTouching(plans [][]touch, k int64, page int, atK func(), touchOne func(buf []byte, tc touch) error) *touching {
	tg := &touching{reached: make(chan struct{}), done: make(chan struct{})}
	var wg sync.WaitGroup
	for _, plan := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer tg.finished.Add(1)
			buf := make([]byte, page)
			for _, tc := range plan {
				if err := touchOne(buf, tc); err != nil {
					tg.errOnce.Do(func() { tg.err = err })
					return
				}
				if tg.touched.Add(1) == k {
					if atK != nil {
						atK()
					}
					close(tg.reached)
				}
			}
		}()
	}
	go func() { wg.Wait(); close(tg.done) }()
	return tg
}

// waitReached waits for the k-th touch; false if every goroutine ended before it (one failed).
func (tg *touching) waitReached() bool {
	select {
	case <-tg.reached:
		return true
	case <-tg.done:
		select {
		case <-tg.reached:
			return true
		default:
			return false
		}
	}
}

// wait waits for every goroutine, failing t if they hang.
func (tg *touching) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-tg.done:
	case <-time.After(hangLimit):
		t.Fatalf("%s: goroutines still touching pages after %v (%d of them done, %d pages touched, %d threads in a fault): a hang",
			what, hangLimit, tg.finished.Load(), tg.touched.Load(), threadsInFault(os.Getpid()))
	}
}

// mismatch describes how got differs from want, "" if it does not.
func mismatch(got, want []byte) string {
	if bytes.Equal(got, want) { // every byte, in runtime assembly (fast under the race detector)
		return ""
	}
	i := 0
	for i < len(got) && got[i] == want[i] {
		i++
	}
	if i == len(got) {
		return ""
	}
	how := "other bytes"
	switch {
	case allZero(got):
		how = "the whole page reads as zeros"
	case allZero(got[i:]):
		how = "zeros from there to the page's end"
	}
	return fmt.Sprintf("byte %d is %#x, the source's %#x (%s)", i, got[i], want[i], how)
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

// copyPage copies src with copy() (runtime assembly) and reports whether the access faulted
// (SIGBUS on a poisoned page) instead of crashing the program.
func copyPage(dst, src []byte) (faulted bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			faulted = true
		}
	}()
	copy(dst, src)
	return false
}

// copyCheck is the touch of a run where handlers survive: copy() the page, compare every byte.
func (ip *injectPair) copyCheck(buf []byte, tc touch) error {
	off := tc.pg * ip.page
	copy(buf, ip.views[tc.view][off:off+ip.page])
	if m := mismatch(buf, ip.data[off:off+ip.page]); m != "" {
		return fmt.Errorf("page %d through view %d: %s", tc.pg, tc.view, m)
	}
	return nil
}

// outsideThreads counts this process's threads asleep in read(2), poll(2) or ppoll(2): the
// threads outside Go (the native handler on its userfaultfd, the guard of the handler
// processes) wait there, while the Go runtime's threads never block in these (they wait in
// futex, epoll_pwait or nanosleep).
func outsideThreads() int {
	tasks, _ := os.ReadDir("/proc/self/task")
	n := 0
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/syscall")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 && (f[0] == strconv.Itoa(unix.SYS_READ) || f[0] == strconv.Itoa(unix.SYS_POLL) || f[0] == strconv.Itoa(unix.SYS_PPOLL)) {
			n++
		}
	}
	return n
}

// waitFor polls cond, a reading of the kernel's account (/proc), until it holds or the
// deadline passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond) // polling the kernel's account, bounded by the deadline
	}
	return true
}

// closeAndCheckThreads closes ip, checking that a thread outside Go served it and that none
// is left once it is closed.
func closeAndCheckThreads(t *testing.T, ip *injectPair, base int) {
	t.Helper()
	if !waitFor(10*time.Second, func() bool { return outsideThreads() > base }) {
		t.Errorf("%s: no thread outside Go waits in read(2) or poll(2) while the pair is served (%d, as before it)", ip.desc, base)
	}
	if err := ip.close(); err != nil {
		t.Errorf("%s: Close: %v", ip.desc, err)
	}
	if !waitFor(10*time.Second, func() bool { return outsideThreads() <= base }) {
		t.Errorf("%s: %d threads outside Go left after Close (had %d)", ip.desc, outsideThreads(), base)
	}
}

// injectLifecycle runs iterations on one pair served by handler processes: each resets a
// random range of pages and touches them with copy() from a few goroutines while, after a
// random number of pages, one handler or both are stopped and resumed (SIGSTOP, SIGCONT), or,
// in one iteration at a random place, the primary or the standby is killed (SIGKILL); later
// iterations stop and resume the survivor. Every iteration must complete with the source's
// bytes, and the pair must verify.
func injectLifecycle(t *testing.T, rng *rand.Rand, c *tally, iters int, kill string) {
	n := (1 << 20) << rng.IntN(3)
	f, data := patternFile(t, n)
	base := outsideThreads()
	defer unchanged(t)()
	ip := newInjectPair(t, rng, handlerCase{"process", WithHandler(HandlerProcess)}, f, data)
	defer ip.close() // after a failure; a second Close is harmless
	pids := ip.p.FaultHandlerPids()
	if len(pids) != 2 {
		t.Fatalf("handler pids %v, want a primary and a standby", pids)
	}
	serving, standby := pids[0], pids[1] // standby 0: dead
	killAt := rng.IntN(iters)
	for it := 0; it < iters; it++ {
		npages := min(32+rng.IntN(129), n/ip.page)
		lo := rng.IntN(n/ip.page - npages + 1)
		if it > 0 {
			if err := ip.p.Reset(lo*ip.page, npages*ip.page); err != nil {
				t.Fatal(err)
			}
		}
		var action string
		switch {
		case it == killAt:
			action = kill
		case standby == 0:
			action = "stop-serving"
		default:
			action = [3]string{"stop-serving", "stop-standby", "stop-both"}[rng.IntN(3)]
		}
		workers := 1 + rng.IntN(injectProcs-3) // stop: every worker may hold its P in a fault
		if action == kill {
			workers = 1 + rng.IntN(injectProcs+2)
		}
		k := 1 + rng.IntN(npages-1)
		what := fmt.Sprintf("%s, iteration %d: %s after %d of the %d pages from page %d, %d goroutines", ip.desc, it, action, k, npages, lo, workers)
		plans := planTouches(rng, lo, npages, len(ip.views), workers)
		var targets []int
		switch action {
		case "stop-serving":
			targets = []int{serving}
		case "stop-standby":
			targets = []int{standby}
		case "stop-both":
			targets = []int{serving, standby}
		}
		blocked := 0
		func() {
			if targets != nil {
				// While a handler is stopped, a goroutine blocked in a fault inside copy()
				// cannot stop for the collector: a collection then would stop everything,
				// this injector included, and nobody would resume the handler.
				defer debug.SetGCPercent(debug.SetGCPercent(-1))
			}
			tg := startTouching(plans, int64(k), ip.page, nil, ip.copyCheck)
			defer func() {
				// On every way out, a failure included: no handler left stopped, no
				// goroutine left touching the views.
				for _, pid := range targets {
					unix.Kill(pid, unix.SIGCONT)
				}
				select {
				case <-tg.done:
				case <-time.After(hangLimit):
				}
			}()
			if tg.waitReached() {
				switch action {
				case "kill-primary":
					if err := unix.Kill(serving, unix.SIGKILL); err != nil {
						t.Errorf("%s: %v", what, err)
					}
					serving, standby = standby, 0
				case "kill-standby":
					if err := unix.Kill(standby, unix.SIGKILL); err != nil {
						t.Errorf("%s: %v", what, err)
					}
					standby = 0
				default:
					for _, pid := range targets {
						stopAndWait(t, pid)
					}
					if targets[0] == serving {
						// Let faults pile up: wait until a random number of goroutines wait
						// in one or have finished (a goroutine left with filled pages only).
						m := 1 + rng.IntN(workers)
						if !waitFor(hangLimit, func() bool {
							blocked = threadsInFault(os.Getpid())
							return blocked+int(tg.finished.Load()) >= m
						}) {
							t.Errorf("%s: fewer than %d goroutines wait in a fault or are done after %v", what, m, hangLimit)
						}
					}
					for _, pid := range targets {
						if err := unix.Kill(pid, unix.SIGCONT); err != nil {
							t.Errorf("%s: SIGCONT %d: %v", what, pid, err)
						}
					}
				}
			}
			tg.wait(t, what)
			if tg.err != nil {
				t.Fatalf("%s: %v", what, tg.err)
			}
		}()
		outcome := "completed"
		if targets != nil && targets[0] == serving {
			outcome = "completed, no fault waited"
			if blocked > 0 {
				outcome = "completed after faults waited"
				c.count("faults waiting on a stopped handler", blocked)
			}
		}
		if action == "kill-primary" {
			if !waitFor(10*time.Second, func() bool { return strings.Contains(ip.p.FaultReport(), "took over") }) {
				t.Errorf("%s: the fault report says no standby took over:\n%s", what, ip.p.FaultReport())
			}
			outcome = "completed, the standby took over"
		}
		if err := ip.p.FaultErr(); err != nil {
			t.Fatalf("%s: FaultErr: %v", what, err)
		}
		c.add(action, outcome)
		c.count("read", npages)
	}
	// Verify reads every filled page of every view with plain loops: once per pair (it is
	// slow under the race detector); each iteration compared every byte it read already.
	if err := ip.p.Verify(); err != nil {
		t.Fatalf("%s: Verify: %v", ip.desc, err)
	}
	closeAndCheckThreads(t, ip, base)
}

// injectTruncate cuts the source file at a random length (page-aligned or not) after a random
// number of pages were touched with copy(): a page wholly below the new end reads the source;
// a page reaching past it reads the source if it was filled before the cut, and otherwise
// faults (SIGBUS), in every view, for good; FaultErr and Verify match ErrSourceFailed exactly
// when a page faulted.
func injectTruncate(t *testing.T, rng *rand.Rand, c *tally, h handlerCase) {
	n := 1 << 20
	f, data := patternFile(t, n)
	base := outsideThreads()
	defer unchanged(t)()
	ip := newInjectPair(t, rng, h, f, data)
	defer ip.close()
	page, npages := ip.page, n/ip.page
	cut := rng.IntN(npages) * page
	if rng.IntN(2) == 0 {
		cut += 1 + rng.IntN(page-1)
	}
	workers := 1 + rng.IntN(injectProcs)
	k := 1 + rng.IntN(npages-1)
	what := fmt.Sprintf("%s: truncated to %d bytes after %d of %d pages, %d goroutines", ip.desc, cut, k, npages, workers)
	const (
		read     = 1
		faulted  = 2
		afterCut = 4 // the touch began once the file was cut
	)
	status := make([]atomic.Int32, npages)
	var cutting, cutDone atomic.Bool
	touchOne := func(buf []byte, tc touch) error {
		after := int32(0)
		if cutDone.Load() {
			after = afterCut
		}
		off := tc.pg * page
		if copyPage(buf, ip.views[tc.view][off:off+page]) {
			switch {
			case !cutting.Load():
				return fmt.Errorf("page %d through view %d faulted before the file was cut", tc.pg, tc.view)
			case off+page <= cut:
				return fmt.Errorf("page %d through view %d faulted, yet the file still has all its bytes", tc.pg, tc.view)
			}
			status[tc.pg].Store(faulted | after)
			return nil
		}
		if m := mismatch(buf, data[off:off+page]); m != "" {
			return fmt.Errorf("page %d through view %d: %s", tc.pg, tc.view, m)
		}
		status[tc.pg].Store(read | after)
		return nil
	}
	tg := startTouching(planTouches(rng, 0, npages, len(ip.views), workers), int64(k), page, nil, touchOne)
	if tg.waitReached() {
		cutting.Store(true)
		if err := f.Truncate(int64(cut)); err != nil {
			t.Fatal(err)
		}
		cutDone.Store(true)
	}
	tg.wait(t, what)
	if tg.err != nil {
		t.Fatalf("%s: %v", what, tg.err)
	}
	nfaulted, kept, split := 0, 0, 0
	for pg := range status {
		st, off := status[pg].Load(), pg*page
		if st&faulted != 0 {
			nfaulted++
		} else if off+page > cut {
			kept++
			if ip.around == 0 && st&afterCut != 0 {
				t.Errorf("%s: page %d, past the new end and first touched after the cut with FaultAround(0), was served", what, pg)
			}
			// A page the source lost but memory kept must read the same through every view.
			for v := range ip.views {
				i := off + rng.IntN(page)
				if b, fault := touchRecover(t, ip.views[v], i); fault || b != data[i] {
					t.Errorf("%s: page %d, read before the cut, reads %#x at byte %d through view %d (faulted %v), the source's %#x: a filled page was poisoned in a view (see TestSourceFailureSparesFilledPages)",
						what, pg, b, i-off, v, fault, data[i])
					split++
					break
				}
			}
		}
		// A sample touched again through a random view: a page that faulted faults for
		// good, the others read the source.
		if rng.IntN(npages) >= 96 {
			continue
		}
		i := off + rng.IntN(page)
		v, fault := touchRecover(t, ip.views[rng.IntN(len(ip.views))], i)
		switch {
		case st&faulted != 0 && !fault:
			t.Errorf("%s: page %d faulted, then read %#x at byte %d (source %#x)", what, pg, v, i-off, data[i])
		case st&faulted == 0 && fault:
			t.Errorf("%s: page %d was read, then faulted", what, pg)
		case st&faulted == 0 && v != data[i]:
			t.Errorf("%s: page %d reads %#x at byte %d, the source's %#x", what, pg, v, i-off, data[i])
		}
	}
	if split > 0 {
		// Verify would read the poisoned view of a page the handler filled and crash the
		// program (SIGBUS in a runtime comparison).
		c.add("truncate/"+h.name, "a filled page faulted through a view")
		return
	}
	ferr, verr := ip.p.FaultErr(), ip.p.Verify()
	if nfaulted > 0 && (!errors.Is(ferr, ErrSourceFailed) || !errors.Is(verr, ErrSourceFailed)) {
		t.Errorf("%s: %d pages faulted; FaultErr = %v, Verify = %v: want ErrSourceFailed", what, nfaulted, ferr, verr)
	}
	switch {
	case nfaulted == 0 && ferr != nil:
		t.Errorf("%s: no page faulted; FaultErr = %v, want nil", what, ferr)
	case nfaulted == 0 && verr != nil && kept == 0:
		t.Errorf("%s: no page faulted, none past the new end was kept; Verify = %v, want nil", what, verr)
	case nfaulted == 0 && verr != nil:
		// Verify compares with the source as it is now: a page filled before the cut holds
		// the bytes the file had then, and Verify calls that a difference.
		c.count("runs where Verify called a page filled before the cut different", 1)
	}
	outcome := "every page past the end was filled before the cut"
	if nfaulted > 0 {
		outcome = "pages past the end faulted"
	}
	c.add("truncate/"+h.name, outcome)
	c.count("faulted past the new end", nfaulted)
	c.count("kept past the new end (filled before the cut)", kept)
	closeAndCheckThreads(t, ip, base)
}

// injectChildren runs the subprocess injections, two at a time, and checks how each ended:
// Close while goroutines fault ends cleanly or on the fault of a goroutine touching a retired
// view; every handler killed ends with exit status 2 and the guard's message. Never bytes
// that are not the source's, never a hang, and no handler process outlives its program.
func injectChildren(t *testing.T, c *tally, runs []string) {
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for _, spec := range runs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, err := runChild("TestFaultInjection", []string{envInjectRun + "=" + spec}, 2*hangLimit)
			action, kind, _ := strings.Cut(spec, "/")
			kind, _, _ = strings.Cut(kind, "/")
			s := string(out)
			var ee *exec.ExitError
			switch {
			case errors.Is(err, context.DeadlineExceeded):
				t.Errorf("%s: hung (killed after %v):\n%s", spec, 2*hangLimit, tail(out))
				return
			case strings.Contains(s, "WRONG"):
				t.Errorf("%s: read bytes that are not the source's:\n%s", spec, tail(out))
				return
			case action == "kill-both":
				if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(s, everyDiedMsg) {
					t.Errorf("%s: %v; want exit status 2 and %q:\n%s", spec, err, everyDiedMsg, tail(out))
					return
				}
				c.add("kill-both/process", "ended with status 2 and the message")
			case err == nil && strings.Contains(s, "every goroutine finished"):
				c.add("close/"+kind, "completed")
			case crashedOnFault(s) && strings.Contains(s, "closing"):
				c.add("close/"+kind, "ended on the fault of a goroutine touching a closed view")
			default:
				t.Errorf("%s: %v:\n%s", spec, err, tail(out))
				return
			}
			var pids [2]int
			for _, l := range strings.Split(s, "\n") {
				if _, err := fmt.Sscanf(l, "handlers %d %d", &pids[0], &pids[1]); err == nil {
					break
				}
			}
			if kind == "process" && pids[0] == 0 {
				t.Errorf("%s: the child printed no handler pids:\n%s", spec, tail(out))
			}
			for _, pid := range pids {
				if pid != 0 && !waitFor(10*time.Second, func() bool { st := procState(pid); return st == "" || st == "Z" }) {
					t.Errorf("%s: handler process %d still runs (state %s) after its program ended", spec, pid, procState(pid))
				}
			}
		}()
	}
	wg.Wait()
}

// injectChild is one subprocess injection: goroutines, more than GOMAXPROCS at times, copy()
// pages and compare them with the source, and after a random number of pages the pair is
// closed, or the goroutine that touched that page kills every handler process.
func injectChild(t *testing.T, spec string) {
	parts := strings.Split(spec, "/")
	if len(parts) != 3 {
		t.Fatalf("bad %s=%q", envInjectRun, spec)
	}
	action, kind := parts[0], parts[1]
	seed, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	h := handlerCase{kind, WithHandler(HandlerProcess)}
	if kind == "native" {
		h.opt = WithHandler(HandlerNative)
	}
	rng := rand.New(rand.NewPCG(seed, injectStream))
	n := (1 + rng.IntN(4)) << 20
	if raceEnabled {
		n /= 2
	}
	// The source file is unlinked at once: a run that crashes leaves nothing on disk.
	f, err := os.CreateTemp("", "mirrormem-inject")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.Name())
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*13 + i/4096 + 1)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	ip := newInjectPair(t, rng, h, f, data)
	npages := n / ip.page
	workers := 1 + rng.IntN(2*runtime.GOMAXPROCS(0)+2)
	k := 1 + rng.IntN(npages-1)
	fmt.Printf("%s: %s after %d of %d pages, %d goroutines\n", ip.desc, action, k, npages, workers)
	pids := ip.p.FaultHandlerPids()
	if len(pids) == 2 {
		fmt.Printf("handlers %d %d\n", pids[0], pids[1])
	}
	touchOne := func(buf []byte, tc touch) error {
		if err := ip.copyCheck(buf, tc); err != nil {
			fmt.Printf("WRONG: %v\n", err)
			os.Exit(3)
		}
		return nil
	}
	var atK func()
	if action == "kill-both" {
		// The goroutine that touched the k-th page kills every handler itself: with every P
		// held by goroutines in faults, no other goroutine might run.
		atK = func() {
			for _, pid := range pids {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	tg := startTouching(planTouches(rng, 0, npages, len(ip.views), workers), int64(k), ip.page, atK, touchOne)
	switch action {
	case "close":
		tg.waitReached()
		fmt.Println("closing")
		if err := ip.p.Close(); err != nil {
			t.Fatal(err)
		}
		fmt.Println("closed")
		<-tg.done
		fmt.Println("every goroutine finished")
		ip.close()
	case "kill-both":
		<-tg.done
		fmt.Println("every goroutine finished, every handler killed")
		time.Sleep(hangLimit / 2) // the guard ends the program meanwhile
		fmt.Println("SURVIVED the death of every handler process")
		os.Exit(5)
	default:
		t.Fatalf("unknown action %q", action)
	}
}

// A page filled through one view must stay readable through every view when the source fails
// later. The failure found by TestFaultInjection, minimised: the handler process is stopped
// while, page after page, a thread faults through the original and then one through the
// mirror (inside madvise(MADV_POPULATE_READ), so that no signal reorders the queue); resumed, it reads both fault
// messages of a page in one batch, fills the page for the first, and for the second reads the
// source again. When the source was cut in between (the test cuts it once the first page is
// served), that second read fails and the handler poisons the page in every view where it is
// not mapped yet: the mirror. The page then holds the source's bytes through the original but
// raises SIGBUS through the mirror, and Verify, which compares the views of filled pages,
// crashes the program. A failing source must not poison a page that is already filled.
func TestSourceFailureSparesFilledPages(t *testing.T) {
	needPoison(t)
	const pages, rounds = 16, 10
	page := alloc.PageSize()
	n := pages * page
	for round := 0; round < rounds && !t.Failed(); round++ {
		func() {
			f, data := patternFile(t, n)
			defer unchanged(t)()
			r := shared(t, n)
			p, closePair := mirrored(t, r, ServeFaults(f), WithHandler(HandlerProcess), FaultAround(0))
			defer closePair()
			primary := p.FaultHandlerPids()[0]
			stopAndWait(t, primary)
			defer unix.Kill(primary, unix.SIGCONT)
			done := make(chan error, 2*pages)
			for q := 0; q < pages; q++ {
				for i, v := range [][]byte{p.Original(), p.Mirror()} {
					go func() {
						done <- unix.Madvise(v[q*page:(q+1)*page], unix.MADV_POPULATE_READ)
					}()
					want := 2*q + i + 1
					if !waitFor(30*time.Second, func() bool { return threadsInFault(os.Getpid())+len(done) >= want }) {
						t.Fatalf("round %d: fault %d not pending after 30 s", round, want)
					}
				}
			}
			unix.Kill(primary, unix.SIGCONT)
			<-done // the first page is served: cut the source while the others are
			if err := f.Truncate(0); err != nil {
				t.Fatal(err)
			}
			for i := 1; i < 2*pages; i++ {
				<-done // EFAULT for pages the source lost
			}
			for q := 0; q < pages; q++ {
				i := q*page + 9
				a, fa := touchRecover(t, p.Original(), i)
				b, fb := touchRecover(t, p.Mirror(), i)
				if fa != fb {
					t.Errorf("round %d, page %d: through the original %#x (faulted %v), through the mirror %#x (faulted %v); the source's byte %#x",
						round, q, a, fa, b, fb, data[i])
				}
			}
		}()
	}
}
