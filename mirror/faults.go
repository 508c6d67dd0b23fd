package mirror

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/uffd"
)

// faultConfig is what ServeFaults and its companion options asked for.
type faultConfig struct {
	serve       bool
	src         io.ReaderAt
	around      int // bytes; -1: default
	logCap      int
	staging     bool
	trackWrites bool
	trackAsync  bool
	handler     Handler
	watchdog    time.Duration // 0: DefaultWatchdog
	restore     RestoreOptions
	used        []string // the companion options given, which all need ServeFaults
	err         error
}

// use records a companion option of ServeFaults, and the first error of any option.
func (f *faultConfig) use(name string, err error) {
	f.used = append(f.used, name)
	if err != nil && f.err == nil {
		f.err = err
	}
}

// DefaultFaultAround is the default cap of the fault-around window: on sequential access the
// handler resolves up to this many bytes per fault (the window doubles per sequential fault,
// from one page), since per-fault costs dominate (4 KiB per fault costs about 4 times more per
// page than 64 KiB).
const DefaultFaultAround = uffd.DefaultFaultAround

// CloseWait is how long Pair.Close waits for a ReadAt of a Go source in flight before it
// returns without it (see ServeFaults).
const CloseWait = 5 * time.Second

// DefaultWatchdog is how long the Go runtime may stand still, while a thread waits in a fault
// of a mirror served by Go code, before the watchdog aborts the process.
const DefaultWatchdog = 10 * time.Second

// ServeFaults registers every view with userfaultfd and serves each missing page from src
// (offset 0 is the first byte of the region; bytes past the end of src are zeros; nil src means
// zero-fill). Pages are served lazily: creating the pair reads nothing from src.
//
// The memory must not hold data yet: a page already in memory would never be asked of the
// source (every view maps it silently), so such pages are refused with ErrResident (free them
// first with MADV_REMOVE, or mirror fresh memory; alloc.Populate and ServeFaults do not mix).
// A source that is the served memory itself (RegionSource of the same region, an overlapping
// range, the region's own memfd) is refused with ErrRange: a page would be filled from itself.
// When Adjacent has to lay every view out anew, the caller's own mapping (r.Bytes(), or b for
// Of) is registered and served too, its faults counted in the original's FaultStats. A page is
// filled once, through whichever view touches it first, and every view's waiters are woken;
// a later first touch through another view is a minor fault (mapped with UFFDIO_CONTINUE, Linux
// 5.14+) where the kernel has MINOR_SHMEM. FaultStats counts both, per view.
//
// A file source is read with pread(2), one read per window of pages, followed by an fstat(2)
// that catches a truncation racing the read. A file that cannot shrink (a memfd sealed with
// F_SEAL_SHRINK) needs no such check and is copied by the kernel straight from a read-only
// mapping of it: seal a memfd image that way and each fault costs one system call less
// (internal/fault's BenchmarkServe, the -sealed rows). A file that shrinks while it is served
// fails the pages it no longer has (see FaultErr): its lost bytes are never served as zeros.
//
// Who serves the faults depends on src, so that a Go program can never hang under garbage
// collection (a goroutine faulting inside copy() cannot be stopped by the collector, and an
// in-process Go handler would wait for the collector forever):
//
//   - nil, an *os.File, anything with a file descriptor that pread(2) can read (an Fd() uintptr
//     or Fd() int method), or another region (RegionSource): a handler that is not Go code of this
//     process — a C thread in cgo builds, a handler process (this program re-executed) with
//     CGO_ENABLED=0. Touch the views any way you like, copy() included.
//   - NamedSource(name, config) (HTTPSource is one): Go code built by a constructor
//     registered with RegisterSource, served by a handler process in every build. Touch those
//     views any way you like too. Its server must not be this program (a goroutine of this
//     program may be waiting in a fault, holding its P).
//   - any other io.ReaderAt is Go code that only this process can run: ServeFaults refuses it
//     with an error matching ErrGoSource that shows how to register it instead, unless you opt
//     in with WithHandler(HandlerGo), which serves it with the library's engine (uffd.Server) in
//     this process (cgo builds only). The rule you then accept: touch pages that may be unfilled only with
//     Populate (a system call), plain Go loops (for i := range b { s += b[i] }) or system
//     calls. Runtime assembly hides in many places, and any of them hangs the program under
//     garbage collection: copy, clear, append, string(b), the bytes, strings and hash/*
//     packages, fmt, strconv, encoding/*, and a channel send or receive of a value read from
//     the view, which the runtime copies with memmove. A watchdog (a C thread) aborts the
//     process with a message naming this rule if it is broken and the program hangs. A page
//     once filled stays safe to touch any way: the kernel may unmap it from a view later
//     (reclaim unmaps shared memory it cannot write out, kswapd and DAMON included, and
//     MADV_DONTNEED does), and the next touch is a minor fault; if that fault stops Go code,
//     the watchdog maps the page (and every filled page missing from a view) itself once Go
//     code has not run for half its timeout, at most a second, and counts it in
//     FaultStats.Rescued.
//
// Every handler runs the same fault engine (a uffd.Server, or the C thread with the same wake
// policy and the same counter block), so every companion option works with every handler and
// every source: FaultAround, VerifyFaults, StageMinorFaults, TrackWrites, and FaultStats,
// FaultLog, Verify and Dirty read the same way.
//
// The userfaultfd needs privilege for faults raised inside the kernel (vm.unprivileged_userfaultfd,
// CAP_SYS_PTRACE); without it, read(2) into an unfilled page and Populate fail with EFAULT.
//
// Handler death never turns into silent zero pages: the pair keeps its own userfaultfd open, so
// the views stay registered whatever happens to a handler process, and a standby process takes
// over from a dead one (waking every view, so that a fault the dead one had read is raised
// again); if every handler process dies, a thread of this program that is not a goroutine (so
// that it runs even when every goroutine waits in a fault) prints the cause to standard error
// and ends the program with exit status 2. A source that fails to read (an error other than
// io.EOF, a short read without one, or a file that became shorter than it was when the pair was
// made) poisons the page (UFFDIO_POISON, 6.6+: the access raises SIGBUS, which a Go program
// reports as "unexpected fault address") and serving goes on; FaultErr and Verify then report
// the failures (ErrSourceFailed). Only the bytes past the source's length at Mirror read as
// zeros. Without poison the process is aborted with a message: the faulting thread could never
// get its bytes, and zeros would be data loss.
//
// Close stops serving within a bounded time, whatever the handlers do (a stopped handler
// process is killed after a second), and never lets a page that should come from the source
// read as zeros: the views that go away with the pair become inaccessible first, so a goroutine
// still touching one crashes (SIGSEGV; EFAULT inside a system call); in the view that stays
// (the region's own mapping, or Of's b) the pages never filled are poisoned before the
// handler stops (with a nil source their zeros are the data). So: do not touch the views while
// or after closing. With a Go source, Close waits up to CloseWait for a ReadAt in flight, then
// returns anyway: that ReadAt's goroutine finishes in the background when ReadAt returns, and
// its bytes are discarded. A source that can block forever (a network read without a
// deadline) leaks that goroutine: give it a timeout.
func ServeFaults(src io.ReaderAt) Option {
	return func(c *config) {
		c.faults.serve = true
		c.faults.src = src
	}
}

// MaxFaultAround is the largest fault-around cap: FaultAround clamps larger values to it.
const MaxFaultAround = 256 << 20

// FaultAround sets the cap of the fault-around window in bytes (rounded down to pages; 0 or
// less: exactly one page per fault; more than MaxFaultAround: MaxFaultAround). Needs
// ServeFaults.
func FaultAround(maxBytes int) Option {
	return func(c *config) {
		c.faults.use("FaultAround", nil)
		c.faults.around = min(max(maxBytes, 0), MaxFaultAround)
	}
}

// MaxFaultLog is the largest log VerifyFaults keeps: 4 Mi entries (128 MiB of counters).
const MaxFaultLog = fault.MaxLogCap

// VerifyFaults keeps a log of the first logEntries faults (view, offset, kind, result, thread
// id, time), readable with FaultLog and summarised by FaultReport. The invariants (each page
// filled at most once; a fault on an already filled page is a minor fault or EEXIST, never a
// second fill) are checked whether or not the log is kept; Verify checks them and the bytes.
// logEntries must be between 0 and MaxFaultLog. Needs ServeFaults, and a handler outside Go
// (the log of the Go server is its own Stats).
func VerifyFaults(logEntries int) Option {
	return func(c *config) {
		var err error
		if logEntries < 0 || logEntries > MaxFaultLog {
			err = fmt.Errorf("%w: VerifyFaults(%d): the log size must be between 0 and MaxFaultLog (%d)", ErrOption, logEntries, MaxFaultLog)
		}
		c.faults.use("VerifyFaults", err)
		c.faults.logCap = min(max(logEntries, 0), MaxFaultLog)
	}
}

// StageMinorFaults serves missing pages the way QEMU, Firecracker and cloud-hypervisor serve
// shared guest memory: the page is written into the page cache through the region's memfd,
// which is not registered, and then mapped into the faulting view with UFFDIO_CONTINUE (every
// fault is a minor fault once the page is staged). The region must be an alloc.Memfd region
// mirrored with Mirror; the kernel must have MINOR_SHMEM (5.14). Needs ServeFaults.
func StageMinorFaults() Option {
	return func(c *config) { c.faults.use("StageMinorFaults", nil); c.faults.staging = true }
}

// TrackWrites registers every view for write-protect faults too, so that TrackDirty and Dirty
// can report the pages written through a view (Linux 5.19+ for shmem). Needs ServeFaults.
func TrackWrites() Option {
	return func(c *config) { c.faults.use("TrackWrites", nil); c.faults.trackWrites = true }
}

// TrackWritesAsync is TrackWrites resolved by the kernel itself (UFFD_FEATURE_WP_ASYNC, Linux
// 6.7+): the first write to a protected page is not sent to the handler but only clears the
// page's write-protect bit, which Dirty reads back from /proc/self/pagemap. Cheaper per written
// page (no round trip to the handler); the writes are not counted in FaultStats.WP nor logged.
// Needs ServeFaults.
func TrackWritesAsync() Option {
	return func(c *config) {
		c.faults.use("TrackWritesAsync", nil)
		c.faults.trackWrites, c.faults.trackAsync = true, true
	}
}

// Handler chooses who serves the faults of a ServeFaults pair.
//
// Why these defaults: the C thread shares this process's address space, so a fault costs it
// the kernel's work and one wake-up; a handler process is woken in another address space,
// which on a virtual machine costs much more. Measured side by side with `go run ./bench
// -suites sources` (file source, medians of per-run ratios against the C thread, a 2-vCPU
// virtual machine): with fault-around on sequential touch the handler process took 1.01 to
// 1.17 times the C thread's time per page; at 4 KiB per fault on random touch, 1.4 to 1.9
// times. It also costs two more processes (the primary and a standby that takes over if it
// dies) and their start-up. So cgo builds use the C thread, and CGO_ENABLED=0 builds the
// handler process, the only handler outside Go they can have; a source that is Go code is
// served by the handler process in every build.
type Handler int

const (
	// HandlerAuto (the default): a C thread in cgo builds, a handler process without cgo.
	// A source that is Go code is refused (ErrGoSource): see HandlerGo.
	HandlerAuto Handler = iota
	// HandlerNative is a C thread of this process (cgo builds only).
	HandlerNative
	// HandlerProcess is a handler process: this program re-executed, which receives the
	// userfaultfd and the source's descriptor. A standby process takes over if it dies.
	// The re-executed program stops in the init function of this module's fault package, so
	// main never runs there, but the init functions of packages initialised before it (those
	// it does not depend on, which sort before it) do: keep them free of side effects that
	// must not happen twice (os.Args[0] is "mirrormem-fault-handler" there). Mirror fails with
	// an error if a handler process does not start serving within 30 seconds.
	HandlerProcess
	// HandlerGo is the library's fault engine (a uffd.Server) run by goroutines of this
	// process: the expert's opt-in for a source that is Go code and not registered. See
	// ServeFaults for the rule it imposes (no runtime assembly on unfilled pages). Every
	// feature works with it as with the other handlers.
	HandlerGo
)

// String names the handler ("auto", "native", "process", "go").
func (h Handler) String() string {
	switch h {
	case HandlerAuto:
		return "auto"
	case HandlerNative:
		return "native"
	case HandlerProcess:
		return "process"
	case HandlerGo:
		return "go"
	}
	return fmt.Sprintf("Handler(%d)", int(h))
}

// WithHandler chooses the fault handler instead of letting ServeFaults decide. Needs ServeFaults.
func WithHandler(h Handler) Option {
	return func(c *config) {
		var err error
		if h < HandlerAuto || h > HandlerGo {
			err = fmt.Errorf("%w: WithHandler(%d): unknown fault handler", ErrOption, int(h))
		}
		c.faults.use("WithHandler", err)
		c.faults.handler = h
	}
}

// MinWatchdog and MaxWatchdog bound the timeout given to Watchdog. Below half a second a
// loaded machine, whose scheduler may leave a goroutine waiting that long, would look hung.
const (
	MinWatchdog = 500 * time.Millisecond
	MaxWatchdog = 24 * time.Hour
)

// Watchdog sets how long the Go runtime may stand still while a thread waits in a fault of a
// mirror served by Go code before the process is aborted with a message (default
// DefaultWatchdog); after half of it, at most a second, the watchdog maps the filled pages
// missing from the views (see ServeFaults); d must be between MinWatchdog and MaxWatchdog. It applies to the only
// handler that is Go code of this process, so it needs ServeFaults with WithHandler(HandlerGo);
// with any other handler it is refused (ErrOption), since nothing of this process could hang.
func Watchdog(d time.Duration) Option {
	return func(c *config) {
		var err error
		if d < MinWatchdog || d > MaxWatchdog {
			err = fmt.Errorf("%w: Watchdog(%v): the timeout must be between %v and %v", ErrOption, d, MinWatchdog, MaxWatchdog)
		}
		c.faults.use("Watchdog", err)
		c.faults.watchdog = d
	}
}

func (f *faultConfig) check() error {
	if f.err != nil {
		return f.err
	}
	if !f.serve && len(f.used) > 0 {
		return fmt.Errorf("%w: %s needs ServeFaults", ErrOption, f.used[0])
	}
	if f.watchdog != 0 && f.handler != HandlerGo {
		return fmt.Errorf("%w: Watchdog watches the in-process Go handler: it needs WithHandler(HandlerGo)", ErrOption)
	}
	if f.handler == HandlerNative && !fault.NativeAvailable {
		return fmt.Errorf("%w: WithHandler(HandlerNative) needs cgo; this program was built with CGO_ENABLED=0 (use HandlerProcess)", ErrUnsupported)
	}
	return nil
}

// FaultStats counts the faults served through one view, the same way for every handler.
type FaultStats struct {
	Missing uint64 // missing faults: the page was not in memory yet
	Minor   uint64 // minor faults: the page was filled through another view, and mapped here
	WP      uint64 // write-protect faults (TrackWrites)
	Filled  uint64 // pages filled through this view (fault-around included): copied, zeroed or staged
	Mapped  uint64 // pages mapped from the page cache with UFFDIO_CONTINUE
	Exists  uint64 // resolves answered EEXIST: someone filled the page first (not an error)
	Bytes   uint64 // bytes filled through this view (copied, zeroed or staged)
	// Rescued counts filled pages that HandlerGo's watchdog mapped into this view while Go
	// code could not run and a thread waited in a page fault: pages the kernel had unmapped
	// (reclaim) that would otherwise have waited for the Go server. 0 for other handlers.
	Rescued uint64
}

// FaultEvent is one entry of the VerifyFaults log.
type FaultEvent struct {
	Time   time.Duration // CLOCK_MONOTONIC
	View   int           // the view that faulted (0: Original, 1: Mirror, ...)
	Offset int           // byte offset of the page in the region
	Kind   string        // "missing", "minor", "wp", "remove" (a MADV_DONTNEED/MADV_REMOVE event)
	Result string        // "copied", "zeroed", "staged+continued", "continued", "exists", "error", "unprotected", "reset"
	Pages  int           // pages resolved (more than 1 with fault-around)
	Thread uint32        // the faulting thread's id
}

// String formats the event on one line.
func (e FaultEvent) String() string {
	return fmt.Sprintf("%v view %d offset %#x: %s -> %s (%d pages, thread %d)", e.Time, e.View, e.Offset, e.Kind, e.Result, e.Pages, e.Thread)
}

// ErrSourceFailed is matched by the error FaultErr and Verify return after the source of a
// ServeFaults pair failed to read: the pages it could not read were poisoned (touching them
// raises SIGBUS), never filled with zeros.
var ErrSourceFailed = errors.New("the fault source failed to read")

// ErrGoSource is matched by the error ServeFaults returns for a plain Go value as a source (an
// io.ReaderAt without a file descriptor). Such a source cannot be read by the program itself:
// a goroutine that touches an unfilled page inside copy() (or clear, bytes.Equal, append) holds
// its P while it waits, and the garbage collector then waits for it, so the program hangs
// (see the package doc). A handler process, which is the program re-executed, serves Go code
// instead, once it knows how to build it. The fix is two lines:
//
//	func init() { mirror.RegisterSource("mysource", openMySource) } // func([]byte) (io.ReaderAt, error)
//	p, err := mirror.Mirror(r, mirror.ServeFaults(mirror.NamedSource("mysource", config)))
//
// WithHandler(HandlerGo) is the expert's in-process alternative (cgo builds only: a watchdog
// catches the hang and ends the program with a clear message).
var ErrGoSource = fmt.Errorf("%w: a Go value as fault source", ErrUnsupported)

// ErrNotServing is returned by the fault methods of a Pair made without ServeFaults.
var ErrNotServing = errors.New("the pair does not serve faults (made without ServeFaults)")
