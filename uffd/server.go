package uffd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// Server resolves the page faults of the ranges it handles, each from its own source: missing
// pages are copied from an io.ReaderAt (UFFDIO_COPY) or zero-filled (UFFDIO_ZEROPAGE), minor
// faults are resolved with UFFDIO_CONTINUE, write-protect faults by lifting the protection.
//
// Registration: Handle and HandleViews do not register anything unless the server was made with
// WithRegister. Register the ranges yourself (Register, or a peer library such as
// userfaultfd-go's mapper.Register) with the modes you need, then tell the server where to find
// the data. The server never unregisters: closing the UFFD does that.
//
// Serving: Serve reads many messages per read(2) and resolves each with one ReadAt into a pooled,
// page-aligned buffer and one ioctl, without allocating. On sequential access it resolves more
// than the faulting page (fault-around, see WithFaultAround). Events are handled, never fatal:
// unmapped views are dropped, moved views follow the move, a duplicate made with mremap (old
// size 0, EventRemap with length 0) becomes another view of the same source, a forked child's
// userfaultfd is handed to WithForkHandler or closed.
//
// Concurrency: EEXIST means someone else (another thread, another view, an earlier fault-around
// window) filled the page: the server wakes the waiters and goes on. EAGAIN means a
// non-cooperative event is pending: the server reads it and retries. Handle, HandleViews, Stats
// and Close may be called while Serve runs.
//
// A Server does not own its UFFD: Close stops serving, and the caller closes the UFFD after it.
//
// Serving memory of this same process, mind the Go runtime. A goroutine waiting in a page fault
// looks busy to the scheduler and keeps its P. (1) It must fault only from plain Go code, never
// inside runtime assembly (copy, clear, bytes.Equal...), or a garbage collection waits for it
// forever while the server, stopped with the world, cannot resolve the fault (see the package
// documentation). (2) The server needs a P of its own: with GOMAXPROCS goroutines waiting in
// faults at once it only runs when the scheduler preempts one of them, every 10 ms, and serving
// is a hundred times slower or worse. Keep the goroutines that may fault at the same time
// below GOMAXPROCS (raise GOMAXPROCS above the number of CPUs if needed: goroutines waiting in a
// fault use no CPU), or fault from system calls (MADV_POPULATE_READ/WRITE) or another process.
// Serve refuses a UFFD made by New in this process when GOMAXPROCS does not exceed the
// goroutines that may fault (WithFaultingGoroutines, default 1), with an error matching
// ErrStarved. A server in another
// process (the UFFD sent over a Unix socket) has neither limit.
type Server struct {
	u    *UFFD
	cfg  serverConfig
	page int
	pool *bufPool

	// mu guards the fields below it and serialises table updates. It is never held while
	// resolving faults; readers use tab without locking.
	mu       sync.Mutex
	entries  []*viewEntry // every view ever handled, in order, for Stats
	nobjects int
	closed   bool
	serving  bool
	done     chan struct{} // closed when the running Serve returns

	tab      atomic.Pointer[table] // the current views, replaced whole on every change
	stopping atomic.Bool           // Serve must return: Close, ctx cancelled, or a fatal error
	failMu   sync.Mutex
	failErr  error // first fatal error of the running Serve

	sstats liveServerStats

	tracker  Tracker      // the observer, if it is a Tracker
	rflags   ResolveFlags // DontWake under a Tracker: waiters are woken after Handled
	stageMu  sync.Mutex   // WithStaging: serialises the check for a page in the page cache and its write
	stopFD   int          // WithDirectReads: an eventfd that Close and cancellation make readable
	direct   bool         // this Serve reads directly (WithDirectReads, or a UFFD WithoutPoller)
	spinning atomic.Bool  // a worker is spinning (server_spin.go): one at a time
	readMu   sync.Mutex   // held over each read and the events it returned (tryRead)

	pf prefetchGate // WithPrefetch: demand faults in flight, for Prefetch
}

// ServerOption configures NewServer.
type ServerOption func(*serverConfig)

type serverConfig struct {
	workers   int
	batch     int
	aroundMax int // bytes; <= one page disables fault-around
	policy    SourceErrorPolicy
	observer  Observer
	register  Mode
	onFork    func(*UFFD)
	onError   func(error)
	stage     *os.File // WithStaging
	direct    bool     // WithDirectReads
	noSpin    bool     // WithoutSpin
	faulting  int      // WithFaultingGoroutines
	prefetch  bool     // WithPrefetch
}

// DefaultFaultAround is the default cap of the fault-around window: 2 MiB, where the per-page
// cost of UFFDIO_COPY stops falling.
const DefaultFaultAround = 2 << 20

// The largest settings NewServer takes: larger values are taken as these. A fault-around window
// beyond 64 MiB saves nothing (the kernel's work per page dominates long before), a read(2) of
// 1024 messages drains any queue a machine builds, and more workers than 256 only hold memory.
const (
	MaxFaultAround = 64 << 20
	MaxBatch       = 1024
	MaxWorkers     = 256
)

// WithWorkers sets how many goroutines read and resolve faults (default 1, at most MaxWorkers). They take turns in
// read(2) and resolve in parallel. Measured on 2 CPUs with a source in memory, a second or third
// worker did not resolve 4 KiB faults faster, from one faulting thread or two: the kernel's
// work per fault dominates, and one reader batches whatever is queued. More workers pay when
// ReadAt waits (disk, network) and faults come from several threads. Each worker holds a buffer
// of the fault-around cap.
func WithWorkers(n int) ServerOption {
	return func(c *serverConfig) {
		if n > 0 {
			c.workers = n
		}
	}
}

// WithBatch sets how many messages one read(2) may return (default 64, at most MaxBatch).
func WithBatch(n int) ServerOption {
	return func(c *serverConfig) {
		if n > 0 {
			c.batch = n
		}
	}
}

// WithFaultAround sets the cap of the fault-around window in bytes (rounded down to pages;
// default DefaultFaultAround). A fault that continues a sequential stream (it lands on the page
// right after the window resolved last for that stream) doubles the stream's window up to the
// cap; any other fault resolves one page and starts a new stream. Up to four streams per source
// are followed at once. A window never passes the end of the view, the source object or the
// source's data. A cap of one page or less disables fault-around; a cap above MaxFaultAround is
// taken as MaxFaultAround. Each worker reads windows into a buffer that grows, up to the cap, as
// the windows it serves need.
func WithFaultAround(maxBytes int) ServerOption {
	return func(c *serverConfig) { c.aroundMax = maxBytes }
}

// WithoutFaultAround resolves exactly the faulting page, always.
func WithoutFaultAround() ServerOption { return WithFaultAround(0) }

// WithDirectReads makes the workers wait for faults in poll(2) and read them with read(2) on
// their own threads, instead of parking in the runtime's poller: a fault then wakes the
// waiting thread itself, with no hand-off through the scheduler. It pays where the server has
// the process to itself (a handler process, as mirror's); it holds one OS thread per worker
// while waiting. Close and a cancelled context still stop Serve at once.
func WithDirectReads() ServerOption { return func(c *serverConfig) { c.direct = true } }

// WithRegister makes Handle and HandleViews register each view with mode (UFFDIO_REGISTER)
// before handling it. Without it the caller registers. Registering a range again with the same
// userfaultfd replaces its modes, so do not combine this with your own registration.
func WithRegister(mode Mode) ServerOption { return func(c *serverConfig) { c.register = mode } }

// WithForkHandler hands the userfaultfd of a forked child (EventFork, negotiated with
// FeatureEventFork) to f, which owns it from then on (serve it with another Server, or close
// it). Without a handler the server closes it: the kernel then unregisters the child's ranges,
// and the child reads zeros where pages were missing.
func WithForkHandler(f func(child *UFFD)) ServerOption { return func(c *serverConfig) { c.onFork = f } }

// WithErrorHandler calls f (from a serving goroutine) with every error the server survives: a
// source error under PoisonOnSourceError, an unusable forked userfaultfd. f must not call Close.
func WithErrorHandler(f func(error)) ServerOption { return func(c *serverConfig) { c.onError = f } }

// SourceErrorPolicy says what the server does when a source's ReadAt fails for a faulting page.
// It never maps zeros in place of data that failed to read.
type SourceErrorPolicy int

const (
	// StopOnSourceError (the default): Serve returns a *SourceError. The faulting thread stays
	// blocked on its fault; the caller decides (retry with a new Serve, or end the program).
	// Closing the UFFD instead would let the kernel map zeros: do that only on purpose.
	StopOnSourceError SourceErrorPolicy = iota
	// PoisonOnSourceError poisons the faulting page (UFFDIO_POISON, Linux 6.6+, needs
	// FeaturePoison) and goes on serving: the faulting thread gets SIGBUS (a Go program panics
	// with "unexpected fault address", recoverable under debug.SetPanicOnFault). The error goes
	// to WithErrorHandler and counts in RangeStats.SourceErrors.
	PoisonOnSourceError
)

// OnSourceError sets the source error policy.
func OnSourceError(p SourceErrorPolicy) ServerOption { return func(c *serverConfig) { c.policy = p } }

// SourceError reports a failed ReadAt for a fault.
type SourceError struct {
	Addr   uintptr // the faulting page
	Offset int64   // its offset in the source
	Err    error   // what ReadAt returned (io.ErrUnexpectedEOF when the source ends before the page)
}

// Error says which page, which offset and what ReadAt said.
func (e *SourceError) Error() string {
	return fmt.Sprintf("uffd: source read for page %#x (offset %d) failed: %v", e.Addr, e.Offset, e.Err)
}

// Unwrap returns ReadAt's error, for errors.Is and errors.As.
func (e *SourceError) Unwrap() error { return e.Err }

// ErrServerClosed is what Serve returns after Close.
var ErrServerClosed = errors.New("uffd: server closed")

// ErrServing is what Serve returns when another Serve of the same server is running.
var ErrServing = errors.New("uffd: Serve is already running on this server")

// ErrUnhandledFault is matched by the error Serve returns for a fault on an address that no
// handled view covers: a range registered on the userfaultfd but never given to Handle.
var ErrUnhandledFault = errors.New("uffd: fault outside every handled range")

// firstBuf is the size of a worker's first buffer; it grows with the windows served (bufFor).
const firstBuf = 64 << 10

// NewServer returns a server for the faults of u. u stays the caller's.
func NewServer(u *UFFD, opts ...ServerOption) *Server {
	cfg := serverConfig{workers: 1, batch: 64, aroundMax: DefaultFaultAround}
	for _, o := range opts {
		o(&cfg)
	}
	page := os.Getpagesize()
	cfg.aroundMax = min(cfg.aroundMax, MaxFaultAround) &^ (page - 1)
	if cfg.aroundMax < page {
		cfg.aroundMax = page
	}
	cfg.batch, cfg.workers = min(cfg.batch, MaxBatch), min(cfg.workers, MaxWorkers)
	s := &Server{u: u, cfg: cfg, page: page, pool: newBufPool(min(cfg.aroundMax, firstBuf)), stopFD: -1}
	if t, ok := cfg.observer.(Tracker); ok {
		s.tracker, s.rflags = t, DontWake
	}
	s.tab.Store(&table{})
	return s
}

// Handle serves faults on [addr, addr+length) from src, offset 0 being addr; a nil src means
// zero-fill (UFFDIO_ZEROPAGE). addr and length must be page aligned and the range must not
// overlap a range already handled. The range must be registered on the server's userfaultfd
// (by the caller, or by the server under WithRegister).
func (s *Server) Handle(addr uintptr, length int, src io.ReaderAt) error {
	return s.handle("Handle", length, src, []uintptr{addr})
}

// HandleViews serves several views of one shared object (shmem or memfd mapped, or duplicated
// with mremap, at each address in views), each view length bytes long, offset 0 being the start
// of every view. A page is filled once: a MISSING fault at offset o through any view copies the
// page into that view (EEXIST: it was filled through another view, which is fine), then wakes the
// waiters at offset o on every view, since a resolve through one view does not wake a thread
// faulting through another. (On a Tracker's fast path the other views are left to their own
// messages instead: see Tracker.Filling.) Counts go to the faulting view.
//
// Register every view with ModeMissing, and also ModeMinor where the userfaultfd has
// FeatureMinorShmem (5.14+): a page filled through one view is then reported as a MINOR fault on
// the others (resolved with UFFDIO_CONTINUE) instead of being mapped by the kernel unseen. A
// view registered MISSING only still works; its later touches of pages filled elsewhere are just
// not counted.
func (s *Server) HandleViews(length int, src io.ReaderAt, views ...uintptr) error {
	if len(views) == 0 {
		return &RangeError{Op: "HandleViews", Len: length, Why: "no view given"}
	}
	return s.handle("HandleViews", length, src, views)
}

func (s *Server) handle(op string, length int, src io.ReaderAt, addrs []uintptr) error {
	if err := s.checkViews(op, length, addrs); err != nil {
		return err
	}
	// Under the lock from the overlap check to the table update, registration included, so
	// that two Handle calls cannot both claim a range. Registering does not wait for events,
	// so a worker waiting for the lock to apply one is not a deadlock.
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.tab.Load()
	for _, a := range addrs {
		if i := old.overlapping(a, a+uintptr(length)); i >= 0 {
			return &RangeError{Op: op, Addr: a, Len: length, Why: fmt.Sprintf("overlaps the handled range [%#x, %#x)", old.views[i].addr, old.views[i].end)}
		}
	}
	if s.cfg.register != 0 {
		for i, a := range addrs {
			if err := s.u.Register(a, length, s.cfg.register); err != nil {
				for _, b := range addrs[:i] {
					s.u.Unregister(b, length)
				}
				return fmt.Errorf("uffd: %s: registering view %d [%#x, +%d) as %v: %w", op, i, a, length, s.cfg.register, err)
			}
		}
	}
	s.nobjects++
	obj := &object{id: s.nobjects, length: int64(length), src: src}
	views := append([]view(nil), old.views...)
	for i, a := range addrs {
		e := &viewEntry{addr: a, length: length, obj: obj, index: i}
		s.entries = append(s.entries, e)
		views = append(views, view{addr: a, end: a + uintptr(length), obj: obj, st: e})
	}
	s.tab.Store(buildTable(views, old.dropped))
	return nil
}

// Unhandle stops serving [addr, addr+length): the parts of handled views inside it are
// dropped (their RangeStats stay, marked Gone once nothing of the view is left), so the
// addresses can be handled again. Use it before unmapping a handled range when the userfaultfd
// does not report EventUnmap. Under WithRegister it also unregisters the range; otherwise
// unregister or unmap it yourself: a later fault on a registered range that no view covers
// stops Serve with ErrUnhandledFault. A fault read before Unhandle is woken and fails or
// faults again as the kernel decides.
func (s *Server) Unhandle(addr uintptr, length int) error {
	pm := uintptr(s.page - 1)
	if length <= 0 || addr&pm != 0 || uintptr(length)&pm != 0 || addr+uintptr(length) < addr {
		return &RangeError{Op: "Unhandle", Addr: addr, Len: length, Why: "need a page-aligned address and a positive length that is a multiple of the page size"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.register != 0 {
		if err := s.u.Unregister(addr, length); err != nil {
			return fmt.Errorf("uffd: Unhandle: %w", err)
		}
	}
	s.dropLocked(addr, addr+uintptr(length))
	return nil
}

func (s *Server) checkViews(op string, length int, addrs []uintptr) error {
	pm := uintptr(s.page - 1)
	if length <= 0 {
		return &RangeError{Op: op, Len: length, Why: "length must be positive"}
	}
	if uintptr(length)&pm != 0 {
		return &RangeError{Op: op, Addr: addrs[0], Len: length, Why: fmt.Sprintf("length is not a multiple of the page size (%d)", s.page)}
	}
	for i, a := range addrs {
		if a&pm != 0 {
			return &RangeError{Op: op, Addr: a, Len: length, Why: "address is not page aligned"}
		}
		if a+uintptr(length) < a {
			return &RangeError{Op: op, Addr: a, Len: length, Why: "range wraps around the address space"}
		}
		for _, b := range addrs[:i] {
			if a < b+uintptr(length) && b < a+uintptr(length) {
				return &RangeError{Op: op, Addr: a, Len: length, Why: fmt.Sprintf("overlaps view %#x of the same call", b)}
			}
		}
		// The server resolves base pages. On hugetlb memory a base-page COPY is EINVAL, and
		// with an empty huge page pool a huge COPY answers EEXIST with nothing mapped, which a
		// server that treats EEXIST as "filled by someone else" would retry forever: refuse it.
		if vmas, err := mem.FindVMAs(a, a+uintptr(length)); err == nil {
			for _, v := range vmas {
				if v.HugeTLBPath() {
					return &RangeError{Op: op, Addr: a, Len: length, Why: fmt.Sprintf("hugetlb memory (%s): the server resolves %d-byte pages only", v.Path, s.page)}
				}
			}
		}
	}
	return nil
}

// Stats returns the counters of every view handled so far, in the order they were handled
// (duplicates picked up from remap events come after their originals' calls). Safe to call
// while serving.
func (s *Server) Stats() []RangeStats {
	s.mu.Lock()
	entries := append([]*viewEntry(nil), s.entries...)
	s.mu.Unlock()
	out := make([]RangeStats, len(entries))
	for i, e := range entries {
		st := e.live.snapshot()
		st.Addr, st.Len, st.Object, st.View = e.addr, e.length, e.obj.id, e.index
		out[i] = st
	}
	return out
}

// ServerStats returns the server-wide counters. Safe to call while serving.
func (s *Server) ServerStats() ServerStats { return s.sstats.snapshot() }

// Serve reads and resolves faults until ctx is done (it returns ctx.Err()), Close is called
// (ErrServerClosed), or a fault cannot be served (a *SourceError under StopOnSourceError, an
// error matching ErrUnhandledFault, a failed ioctl, the userfaultfd closed under it). Faults
// being resolved when it stops are finished; faults not read yet stay pending in the kernel, and
// a new Serve picks them up. Only one Serve runs at a time.
func (s *Server) Serve(ctx context.Context) error {
	if ctx == nil {
		ctx = context.Background()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.serving {
		s.mu.Unlock()
		return ErrServing
	}
	if s.cfg.policy == PoisonOnSourceError && s.u.Features()&FeaturePoison == 0 {
		s.mu.Unlock()
		return fmt.Errorf("uffd: PoisonOnSourceError needs a userfaultfd made with WithFeatures(FeaturePoison): %w", &FeatureError{Missing: FeaturePoison})
	}
	if s.cfg.stage != nil && s.u.Features()&FeatureMinorShmem == 0 {
		s.mu.Unlock()
		return fmt.Errorf("uffd: WithStaging maps staged pages with UFFDIO_CONTINUE: %w", &FeatureError{Missing: FeatureMinorShmem})
	}
	if err := s.checkProcs(); err != nil {
		s.mu.Unlock()
		return err
	}
	direct := s.cfg.direct || s.u.unpolled
	// The deadline is how Close interrupts a read parked in the poller without closing the fd.
	if err := s.u.setReadDeadline(time.Time{}); err != nil && !direct {
		s.mu.Unlock()
		return fmt.Errorf("uffd: the userfaultfd is not in the runtime poller, Close could not interrupt Serve: %w", err)
	}
	s.direct = direct
	if direct {
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			s.mu.Unlock()
			return fmt.Errorf("uffd: WithDirectReads: %w", os.NewSyscallError("eventfd", err))
		}
		s.stopFD = efd
	}
	s.serving = true
	s.stopping.Store(false)
	s.failErr = nil
	done := make(chan struct{})
	s.done = done
	s.mu.Unlock()

	stopAfter := context.AfterFunc(ctx, s.interrupt)
	var wg sync.WaitGroup
	for i := 1; i < s.cfg.workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runWorker()
		}()
	}
	s.runWorker()
	wg.Wait()
	stopAfter()

	s.mu.Lock()
	s.serving = false
	s.u.setReadDeadline(time.Time{})
	if s.stopFD >= 0 {
		unix.Close(s.stopFD)
		s.stopFD = -1
	}
	closed := s.closed
	close(done)
	s.mu.Unlock()

	s.failMu.Lock()
	err := s.failErr
	s.failMu.Unlock()
	switch {
	case err != nil:
		return err
	case closed:
		return ErrServerClosed
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return errors.New("uffd: Serve stopped for no reason") // unreachable: workers stop only on one of the above
}

// interrupt makes every worker of the running Serve return soon: a read parked in the poller
// returns at once with os.ErrDeadlineExceeded.
func (s *Server) interrupt() {
	s.mu.Lock()
	if s.serving {
		s.stopping.Store(true)
		s.u.setReadDeadline(time.Unix(1, 0))
		if s.stopFD >= 0 {
			one := [8]byte{1}
			unix.Write(s.stopFD, one[:])
		}
	}
	s.mu.Unlock()
}

// fail records the first fatal error of the running Serve and stops it.
func (s *Server) fail(err error) {
	s.failMu.Lock()
	if s.failErr == nil {
		s.failErr = err
	}
	s.failMu.Unlock()
	s.interrupt()
}

// Close stops Serve (at once if it is waiting for faults; a fault being resolved is finished,
// so a source whose ReadAt never returns keeps Close waiting) and waits for it to return. Later Serve calls return ErrServerClosed. Close does not close the
// UFFD. A second Close returns nil.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.pf.stopAll() // a Prefetch returns ErrServerClosed, once its reads in flight are over
	serving, done := s.serving, s.done
	s.mu.Unlock()
	if serving {
		s.interrupt()
		<-done
	}
	s.pool.drain() // the page buffers (up to the fault-around cap each) go back to the heap
	return nil
}
