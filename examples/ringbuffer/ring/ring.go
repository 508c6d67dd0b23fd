package ring

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

var (
	// ErrClosed is returned by every call on a ring that was closed (in this process or, for a
	// shared ring, in the other one), and by the producer's calls after CloseWrite.
	ErrClosed = errors.New("ring: closed")
	// ErrWouldBlock is returned in non-blocking mode where a blocking ring would wait.
	ErrWouldBlock = errors.New("ring: would block")
	// ErrTooLarge is returned when a call asks for a window larger than the ring.
	ErrTooLarge = errors.New("ring: request larger than the ring")
	// ErrPeerGone is returned by a side of a shared ring that waits for the other side when
	// the other process has exited without closing the ring (it was killed, or crashed). What
	// the other side published before it died can still be read.
	ErrPeerGone = errors.New("ring: the other process exited without closing the ring")
)

// state bits of header.state.
const (
	stateClosed    = 1 << 0 // Close was called
	stateWriteDone = 1 << 1 // CloseWrite was called
)

// Ring is a single-producer, single-consumer byte ring on a mirrored buffer. See the package
// documentation for which goroutine may call what.
type Ring struct {
	h   *header
	buf []byte // the 2n adjacent view: buf[i] and buf[i+n] are the same byte
	n   uint64

	nonBlocking bool
	spinFor     time.Duration // SpinFor
	// track: calls that touch only the header must tell Close they are running, because the
	// header is mapped memory that Close unmaps (NewShared, Attach). A ring made by New keeps
	// its header on the Go heap, so its zero-copy calls skip the two atomic stores.
	track bool
	// cheapPublish: publish stores head and tail with a plain store instead of a fenced one
	// (XCHG on x86-64, a fifth of a small Write's cost; BenchmarkCallCost). The wake-up
	// protocol needs a full fence between a side's store of its index and its look at the
	// other side's waiting flag, and between a sleeper's store of its flag and its last look
	// at the other index; as for the active flags (active.go), the sleeper, which is rare,
	// takes both with membarrier(2) after setting its flag: after that, either the publisher's
	// index store is visible to the sleeper's look, or the publisher's look at the flag comes
	// after the fence and sees it set. Only for a ring made by New (membarrier reaches the
	// threads of this process only), with membarrier, on a processor that keeps stores in
	// order (the plain store must still publish the bytes written before it), and never
	// under the race detector (cheapFlags).
	cheapPublish bool

	closed  atomic.Bool   // this handle was closed: nothing below may be touched any more
	wakeups atomic.Uint64 // wake-ups sent by commit and consume (tests check that they are rare)
	misc    atomic.Int32  // calls of Len, Free, Files in progress
	peer    peerWatch     // the other process of a shared ring
	closeCh chan struct{} // a side that leaves a call after Close tells Close here
	done    chan struct{} // closed when Close has released everything
	mem     *memory

	_    [lineSize]byte
	prod side // the producer's private state
	cons side // the consumer's private state
}

// side is what one side keeps to itself, on its own cache lines.
type side struct {
	active activeFlag // 1 while a call of this side runs (Close waits for 0); see active.go
	// pos is this side's index (head or tail) in [0, 2n), as this side sees it: it runs ahead
	// of the published index by the bytes a Writer buffered or Reserve reserved (producer) or
	// NextRecord released (consumer) and not yet published. Only this side writes it.
	pos  uint64
	pub  uint64 // the index last published in the header (head or tail)
	peer uint64 // last value read of the other side's index
	lent uint64 // bytes handed out by the last WriteSlice/ReadSlice and not yet released
	cur  uint64 // consumer: bytes of the record last returned by NextRecord, released by the next call
	// Set once when the ring is made:
	idx   *atomic.Uint64 // this side's index in the header: head (producer) or tail (consumer)
	sleep *sleepLine     // this side's sleep in the header
	w     waiter         // how this side sleeps and is woken
	other *side
	_     [lineSize - 88]byte
}

// DefaultSize is a good capacity for streaming between two cores: 256 KiB. The bytes of a
// stream go from the producer's cache to the consumer's, and a ring that stays in the level-2
// cache of both cores (512 KiB to 2 MiB per core on current x86 servers) next to what each side
// copies from or to keeps that traffic between caches instead of memory. It holds four 64 KiB
// messages, so the producer fills one part while the consumer drains another. Measured on a
// 2-core machine with 1 MiB of L2 per core (Write and io.ReadFull between two goroutines, ring
// sizes interleaved, median of 7 runs): 4 KiB messages 21.5 GB/s at 256 KiB, against 19.9 at
// 64 KiB, 13.5 at 1 MiB and 15.6 at 4 MiB; 64 KiB messages 21.9 GB/s at 256 KiB, against 12.1
// at 1 MiB and 18.6 at 4 MiB. Between two processes, where a wake-up is a futex round trip, a
// larger ring can do better: the example program moves 4 GiB between two processes at about
// 7 GiB/s through 1 MiB and 5 GiB/s through 256 KiB.
const DefaultSize = 256 << 10

// Option configures a ring.
type Option func(*config)

type config struct {
	nonBlocking bool
	spinFor     time.Duration
	name        string
	futex       bool
}

// NonBlocking makes calls that would wait (a full ring for the producer, an empty one for the
// consumer) return ErrWouldBlock instead. Write and ReadFrom then return what they did so far.
func NonBlocking() Option { return func(c *config) { c.nonBlocking = true } }

// SpinFor makes a side that must wait look at the ring again and again (yielding the
// processor between looks) for up to d before it sleeps. At low load that trades a CPU kept
// busy while waiting for the cost of a sleep and a wake-up on each message: a futex or
// scheduler wake-up of several microseconds, and tens of microseconds when the other CPU
// is idle on a virtual machine. The default is to spin little (see spinTries): on a machine
// shared with other programs, a spinning side takes time the other side needs.
func SpinFor(d time.Duration) Option { return func(c *config) { c.spinFor = d } }

// Name sets the name of the memfds of a ring made by NewShared (shown in /proc/PID/maps as
// memfd:NAME-header and memfd:NAME). The default is "ring".
func Name(name string) Option { return func(c *config) { c.name = name } }

func buildConfig(opts []Option) config {
	c := config{name: "ring"}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// New returns a ring for use inside one process, holding size bytes rounded up to whole pages
// (the capacity need not be a power of two). Its memory is shared anonymous memory mapped
// twice, back to back; its header is ordinary Go memory; a waiting side parks in the Go
// scheduler.
func New(size int, opts ...Option) (*Ring, error) {
	c := buildConfig(opts)
	m, err := newLocalMemory(size)
	if err != nil {
		return nil, err
	}
	r := newRing(m, c)
	return r, nil
}

// NewShared returns a ring whose header and data live in two memfds, so another process can
// map the same ring with Attach (get the files with Files). A waiting side sleeps on a futex in
// the shared header. The size is rounded up to whole pages. The memfds are sealed against
// shrinking (F_SEAL_SHRINK): neither process can truncate them under the other.
func NewShared(size int, opts ...Option) (*Ring, error) {
	c := buildConfig(opts)
	c.futex = true
	m, err := newSharedMemory(c.name, size)
	if err != nil {
		return nil, err
	}
	r := newRing(m, c)
	r.peer.creator = true
	r.h.creatorPid.Store(int32(os.Getpid()))
	return r, nil
}

// Attach maps a ring made by NewShared in another process, from its header and data memfds.
// It does not take ownership of the descriptors: close them when Attach returns if you no
// longer need them. It refuses descriptors that do not hold a ring header of this version,
// whose data size does not match the header, that are not sealed against shrinking as
// NewShared seals them, or whose header holds impossible positions (ErrCorrupt).
func Attach(headerFD, dataFD int, opts ...Option) (*Ring, error) {
	c := buildConfig(opts)
	c.futex = true
	m, err := attachSharedMemory(headerFD, dataFD)
	if err != nil {
		return nil, err
	}
	h := m.hdr
	r := newRing(m, c)
	// What each side knows of the other starts at nothing readable and no room: head and tail,
	// read one after the other while the other process runs, need not be a pair, and the
	// first call of each side reads the other's position again, checked.
	r.prod.peer, r.cons.peer = r.advance(r.prod.pos, r.n), r.cons.pos
	h.attacherPid.Store(int32(os.Getpid()))
	return r, nil
}

func newRing(m *memory, c config) *Ring {
	setupCheapFlags()
	r := &Ring{
		h:            m.hdr,
		buf:          m.view,
		n:            uint64(len(m.view) / 2),
		nonBlocking:  c.nonBlocking,
		spinFor:      c.spinFor,
		closeCh:      make(chan struct{}, 1),
		done:         make(chan struct{}),
		mem:          m,
		track:        m.hdrReg != nil,
		cheapPublish: cheapFlags && tsoStores && !c.futex,
		peer:         peerWatch{fd: -1},
	}
	r.prod.idx, r.prod.sleep, r.prod.other = &r.h.head, &r.h.writer, &r.cons
	r.cons.idx, r.cons.sleep, r.cons.other = &r.h.tail, &r.h.reader, &r.prod
	if c.futex {
		r.prod.w, r.cons.w = futexWaiter{}, futexWaiter{}
	} else {
		r.prod.w, r.cons.w = newChanWaiter(), newChanWaiter()
	}
	if r.h.magic == 0 {
		r.h.capacity = r.n
		r.h.version = headerVersion
		r.h.magic = headerMagic
	}
	r.prod.pos = r.h.head.Load()
	r.cons.pos = r.h.tail.Load()
	r.prod.pub, r.cons.pub = r.prod.pos, r.cons.pos
	r.prod.peer = r.cons.pos
	r.cons.peer = r.prod.pos
	return r
}

// Cap returns the capacity in bytes: the requested size rounded up to whole pages.
func (r *Ring) Cap() int { return int(r.n) }

// Len returns the number of bytes written and not yet consumed (0 once closed).
func (r *Ring) Len() int {
	if !r.enterMisc() {
		return 0
	}
	defer r.exitMisc()
	return int(r.used(r.h.head.Load(), r.h.tail.Load()))
}

// Free returns the number of bytes that can be written without waiting (0 once closed).
func (r *Ring) Free() int {
	if !r.enterMisc() {
		return 0
	}
	defer r.exitMisc()
	return int(r.n - r.used(r.h.head.Load(), r.h.tail.Load()))
}

// Files returns duplicates of the header and data memfds of a ring made by NewShared or
// Attach, for another process to Attach (for example through exec.Cmd.ExtraFiles). The caller
// closes them. Files fails for a ring made by New.
func (r *Ring) Files() (header, data *os.File, err error) {
	if !r.enterMisc() {
		return nil, nil, ErrClosed
	}
	defer r.exitMisc()
	if r.mem.hdrFD < 0 {
		return nil, nil, errors.New("ring: Files needs a ring made by NewShared or Attach; this one was made by New and has no file descriptors")
	}
	hfd, err := unix.FcntlInt(uintptr(r.mem.hdrFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
	}
	dfd, err := unix.FcntlInt(uintptr(r.mem.dataFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(hfd)
		return nil, nil, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
	}
	return os.NewFile(uintptr(hfd), "ring-header"), os.NewFile(uintptr(dfd), "ring-data"), nil
}

// checkAttached refuses a header that is not one of a ring of dataSize bytes, before Attach
// maps the data (and populates it: a data file that is not the ring's must not be written).
func checkAttached(h *header, headerFD, dataFD, dataSize int) error {
	switch {
	case h.magic != headerMagic:
		return fmt.Errorf("ring: Attach: fd %d holds no ring header (magic %#x); pass the header file of a ring made by NewShared first, then its data file", headerFD, h.magic)
	case h.version != headerVersion:
		return fmt.Errorf("ring: Attach: ring header version %d, this package reads version %d", h.version, headerVersion)
	case h.capacity != uint64(dataSize):
		return fmt.Errorf("ring: Attach: header says %d bytes but data fd %d holds %d", h.capacity, dataFD, dataSize)
	case h.head.Load() >= 2*h.capacity || h.tail.Load() >= 2*h.capacity:
		// Each on its own: the other process may move them between two loads, so how far
		// apart they are is checked where they are used (readSlice, writeSlice).
		return fmt.Errorf("%w: Attach: the header's head %d or tail %d is not a position of a %d-byte ring", ErrCorrupt, h.head.Load(), h.tail.Load(), h.capacity)
	}
	return nil
}

// used is the number of bytes between tail and head, both in [0, 2n).
func (r *Ring) used(head, tail uint64) uint64 {
	if head >= tail {
		return head - tail
	}
	return head + 2*r.n - tail
}

// advance moves an index in [0, 2n) forward by k <= n bytes.
func (r *Ring) advance(pos, k uint64) uint64 {
	pos += k
	if pos >= 2*r.n {
		pos -= 2 * r.n
	}
	return pos
}

// offset is where an index points into the first copy of the buffer.
func (r *Ring) offset(pos uint64) uint64 {
	if pos >= r.n {
		return pos - r.n
	}
	return pos
}

// spinTries bounds how many times a waiting side of a shared ring yields the processor and
// looks again before it sleeps on the futex: a futex sleep and wake-up between processes cost
// several microseconds each way, and what we wait for often comes sooner than that
// (BenchmarkWake: a futex round trip drops about threefold with the spin). A ring made by New
// yields once only (see keepSpinning): its sides park in the Go scheduler, which looks for work
// a little before it puts a thread to sleep, and on a machine whose cores are also busy with
// other programs a side that spins takes time the other side needs. Measured on a loaded
// 2-core machine (64 KiB and 4 KiB messages through a DefaultSize ring, Write and
// io.ReadFull): spinning 64 yields first cut the wake-ups from 0.5 to 0.02 per 64 KiB message
// and from 0.03 to 0.001 per 4 KiB one, and still lost 5 to 30% (64 KiB) and 15 to 70% (4 KiB)
// of the throughput.
const spinTries = 64

// spinPause is one step of a waiting side's spin.
func spinPause() { runtime.Gosched() }

// keepSpinning says whether a waiting side looks again (after spinPause) instead of sleeping,
// at its i-th look: once on any ring, up to spinTries looks on a shared ring, and for as long
// as SpinFor says.
//
// The one yield of a ring made by New is for the two sides taking turns on one processor, which
// is what they do on a machine whose other processor is busy: the side that must wait has
// just published, so the other side is ready to run, and a yield runs it here at once, where a
// sleep would cost a membarrier (cheapPublish), a park, and a wake-up that the scheduler often
// hands to the other processor, which then reads the whole ring from this one's cache.
// Measured on a loaded 2-core machine, three interleaved pairs of runs without and with the
// yield: BenchmarkRecordStream 64 B records 36-48 ns -> 29-35 ns, wake-ups 0.0005-0.0013 ->
// 0.00025 per record; 4 KiB records 345-390 ns -> 207-295 ns, wake-ups 0.031 -> 0.002;
// BenchmarkStream local, DefaultSize (4 KiB Writes, WriteTo) 185-271 ns -> 118-176 ns; the
// bench's batched 4 KiB record row, medians of five runs per build: 8.5, 11.2, 6.9 GB/s ->
// 11.4, 14.4, 14.7 GB/s (its 64 B row did not move: 1.21 and 1.24 GB/s, medians of 15).
func (r *Ring) keepSpinning(i int, until *time.Time) bool {
	if r.spinFor > 0 {
		now := time.Now()
		if i == 0 {
			*until = now.Add(r.spinFor)
		}
		if now.Before(*until) {
			return true
		}
	}
	return i < 1 || (r.track && i < spinTries)
}

// enter marks a call of side s as running, or refuses it if the ring is closed.
func (r *Ring) enter(s *side) error {
	s.active.set(1)
	if r.closed.Load() {
		r.exit(s)
		return ErrClosed
	}
	return nil
}

// enterLight is enter for calls that touch only the header (see Ring.track).
func (r *Ring) enterLight(s *side) error {
	if r.track {
		return r.enter(s)
	}
	if r.closed.Load() {
		return ErrClosed
	}
	return nil
}

func (r *Ring) exitLight(s *side) {
	if r.track {
		r.exit(s)
	}
}

func (r *Ring) exit(s *side) {
	s.active.set(0)
	if r.closed.Load() {
		r.tellCloser()
	}
}

func (r *Ring) enterMisc() bool {
	r.misc.Add(1)
	if r.closed.Load() {
		r.exitMisc()
		return false
	}
	return true
}

func (r *Ring) exitMisc() {
	r.misc.Add(-1)
	if r.closed.Load() {
		r.tellCloser()
	}
}

func (r *Ring) tellCloser() {
	select {
	case r.closeCh <- struct{}{}:
	default:
	}
}

// WriteSlice returns the free space of the ring as one contiguous slice of at least min bytes
// (min 0 means at least 1), waiting until that much is free (or returning ErrWouldBlock in
// non-blocking mode). Fill a prefix of it and publish that prefix with Commit. The slice is
// never split at the end of the buffer. Producer only.
//
// A producer waiting for m free bytes and a consumer waiting (ReadSliceAtLeast) for k readable
// bytes wait for each other forever if k+m > Cap()+1: with records of up to (Cap()+1)/2 bytes
// on both sides that cannot happen. Write, Read, ReadFrom and WriteTo wait for one byte only.
func (r *Ring) WriteSlice(min int) ([]byte, error) {
	if min < 0 || uint64(min) > r.n {
		return nil, fmt.Errorf("%w: WriteSlice(%d) on a ring of %d bytes", ErrTooLarge, min, r.n)
	}
	if err := r.enterLight(&r.prod); err != nil {
		return nil, err
	}
	b, err := r.writeSlice(uint64(max(min, 1)))
	r.exitLight(&r.prod)
	return b, err
}

func (r *Ring) writeSlice(need uint64) ([]byte, error) {
	p := &r.prod
	if st := r.h.state(); st != 0 {
		return nil, ErrClosed // closed, or CloseWrite was called
	}
	free := r.n - r.used(p.pos, p.peer)
	if free < need {
		// The cached tail says full: look at the consumer's tail once, here, before the
		// waiting loop (the usual case in a stream that does not wait).
		p.peer = r.h.tail.Load()
		if free = r.n - r.used(p.pos, p.peer); free < need {
			var err error
			if free, err = r.waitWritable(need); err != nil {
				return nil, err
			}
		}
	}
	if free > r.n || p.peer >= 2*r.n {
		return nil, r.badPosition(p, "consumer")
	}
	off := r.offset(p.pos)
	p.lent = free
	return r.buf[off : off+free : off+free], nil
}

// waitWritable returns the free space once it is at least need.
func (r *Ring) waitWritable(need uint64) (uint64, error) {
	p, h := &r.prod, r.h
	if p.pos != p.pub {
		// The consumer may be waiting for what this side buffered: publish it before waiting
		// for room, or both would wait for ever.
		r.publish(p)
	}
	// The consumer wakes us only once need bytes are free (wakeOther): one wake-up per wait,
	// not one per Consume.
	return r.waitFor(p, need, func() uint64 {
		p.peer = h.tail.Load()
		return r.n - r.used(p.pos, p.peer)
	}, func(uint32) (uint64, error) { return 0, ErrClosed })
}

// waitFor puts side s to sleep until ready, which reads the other side's index, says
// that at least need bytes are there, and returns that count. Once the ring's state is not 0
// (Close, CloseWrite) it returns what closed says instead. Protocol: see waiter.
func (r *Ring) waitFor(s *side, need uint64, ready func() uint64, closed func(state uint32) (uint64, error)) (uint64, error) {
	var spinUntil time.Time
	for i := 0; ; i++ {
		if k := ready(); k >= need {
			return k, nil
		}
		if st := r.h.state(); st != 0 {
			return closed(st)
		}
		if r.nonBlocking {
			return 0, ErrWouldBlock
		}
		if r.keepSpinning(i, &spinUntil) {
			spinPause()
			continue
		}
		sl := s.sleep
		sl.need.Store(need)
		tok := s.w.prepare(&sl.seq)
		sl.waiting.Store(1)
		if r.cheapPublish {
			heavyFence() // see cheapPublish
		}
		if ready() >= need || r.h.state() != 0 {
			sl.waiting.Store(0)
			continue
		}
		timedOut := s.w.sleep(&sl.seq, tok)
		sl.waiting.Store(0)
		if timedOut {
			if err := r.peerAlive(); err != nil {
				return 0, err
			}
		}
	}
}

// Commit publishes the first n bytes of the slice returned by the last WriteSlice to the
// consumer. The rest of that slice stays the producer's until the next WriteSlice. Producer only.
func (r *Ring) Commit(n int) error { return r.settle(&r.prod, n, "Commit", "WriteSlice") }

// settle is Commit and Consume: side s passes and publishes n bytes of the slice lent by its
// last slice call (named lender).
func (r *Ring) settle(s *side, n int, call, lender string) error {
	if err := r.enterLight(s); err != nil {
		return err
	}
	if n < 0 || uint64(n) > s.lent {
		r.exitLight(s)
		return fmt.Errorf("ring: %s(%d) but %s lent %d bytes", call, n, lender, s.lent)
	}
	r.pass(s, uint64(n))
	r.exitLight(s)
	return nil
}

// pass moves side s past n bytes of the slice lent to it and publishes them.
func (r *Ring) pass(s *side, n uint64) {
	s.pos = r.advance(s.pos, n)
	s.lent -= n
	r.publish(s)
}

// publish makes every byte side s passed so far (the producer: wrote, committed, buffered or
// reserved; the consumer: consumed or released) the other side's, and wakes the other side if
// it sleeps waiting for them.
func (r *Ring) publish(s *side) {
	s.pub = s.pos
	if r.cheapPublish {
		plainStore(s.idx, s.pos)
	} else {
		s.idx.Store(s.pos)
	}
	if s.other.sleep.waiting.Load() != 0 {
		r.wakeOther(s)
	}
}

// wakeOther wakes the other side of s if what it waits for is there: readable bytes for the
// consumer, free space for the producer. A side does not move while it sleeps (it published
// its position before), so the header's head and tail are where both sides are. Protocol: see
// waiter.
func (r *Ring) wakeOther(s *side) {
	o := s.other
	have := r.used(r.h.head.Load(), r.h.tail.Load())
	if o == &r.prod {
		have = r.n - have
	}
	if have >= o.sleep.need.Load() && o.sleep.waiting.Swap(0) != 0 {
		r.wakeups.Add(1)
		o.w.wake(&o.sleep.seq)
	}
}

// ReadSlice returns every byte written and not yet consumed as one contiguous slice, waiting
// for at least one byte. It returns io.EOF once CloseWrite was called and everything before it
// was consumed, and ErrWouldBlock in non-blocking mode where it would wait. Release a prefix of
// the slice with Consume. Consumer only.
func (r *Ring) ReadSlice() ([]byte, error) { return r.ReadSliceAtLeast(1) }

// ReadSliceAtLeast is ReadSlice that waits until at least min bytes are readable: a record of up
// to Cap bytes can be parsed in place whatever its position in the ring. If the producer calls
// CloseWrite with fewer than min bytes left, it returns io.ErrUnexpectedEOF (io.EOF if none).
func (r *Ring) ReadSliceAtLeast(min int) ([]byte, error) {
	if min < 0 || uint64(min) > r.n {
		return nil, fmt.Errorf("%w: ReadSliceAtLeast(%d) on a ring of %d bytes", ErrTooLarge, min, r.n)
	}
	if err := r.enterLight(&r.cons); err != nil {
		return nil, err
	}
	r.cons.peer = r.h.head.Load() // every byte published so far, not only those seen last time
	b, err := r.readSlice(uint64(max(min, 1)))
	r.exitLight(&r.cons)
	return b, err
}

func (r *Ring) readSlice(need uint64) ([]byte, error) {
	c := &r.cons
	avail := r.used(c.peer, c.pos)
	if avail < need {
		c.peer = r.h.head.Load() // as in writeSlice
		if avail = r.used(c.peer, c.pos); avail < need {
			var err error
			if avail, err = r.waitReadable(need); err != nil {
				return nil, err
			}
		}
	}
	if avail > r.n || c.peer >= 2*r.n {
		return nil, r.badPosition(c, "producer")
	}
	off := r.offset(c.pos)
	c.lent = avail
	return r.buf[off : off+avail : off+avail], nil
}

// badPosition is the error for an index of the other side (s.peer, read from the header) that
// no side of this package writes: outside [0, 2n), or more than the capacity away from s's
// own. Only memory shared with another process can hold one (that process wrote it, or
// corrupted the header). s forgets it: s.peer is set to say no byte is readable (consumer) or
// free (producer), so that no call slices the ring by it; the next slow path reads it again.
func (r *Ring) badPosition(s *side, other string) error {
	bad := s.peer
	if s == &r.cons {
		s.peer = s.pos
	} else {
		s.peer = r.advance(s.pos, r.n)
	}
	return fmt.Errorf("%w: the %s's position %d in the shared header is impossible (this side is at %d of a %d-byte ring)", ErrCorrupt, other, bad, s.pos, r.n)
}

func (r *Ring) waitReadable(need uint64) (uint64, error) {
	c, h := &r.cons, r.h
	if c.pos != c.pub {
		r.publish(c) // as in waitWritable: the producer may be waiting for this room
	}
	ready := func() uint64 {
		c.peer = h.head.Load()
		return r.used(c.peer, c.pos)
	}
	return r.waitFor(c, need, ready, func(st uint32) (uint64, error) {
		if st&stateClosed != 0 {
			return 0, ErrClosed
		}
		// CloseWrite stores its flag after the producer's last head: read head again.
		switch avail := ready(); {
		case avail >= need:
			return avail, nil
		case avail == 0:
			return 0, io.EOF
		}
		return 0, io.ErrUnexpectedEOF
	})
}

// Consume releases the first n bytes of the slice returned by the last ReadSlice back to the
// producer. Consumer only.
func (r *Ring) Consume(n int) error { return r.settle(&r.cons, n, "Consume", "ReadSlice") }

// Write copies p into the ring (io.Writer), waiting for space as needed. In non-blocking mode
// it copies what fits and returns ErrWouldBlock if that is not all of p. Producer only.
func (r *Ring) Write(p []byte) (int, error) {
	if err := r.enter(&r.prod); err != nil {
		return 0, err
	}
	n, err := r.write(p, 1)
	r.exit(&r.prod)
	return n, err
}

// write copies p into the ring, waiting for room as needed (publishing what it holds before
// it waits), and publishes the bytes whenever at least every of them are unpublished: every 1
// for Write, the flush size for a Writer.
func (r *Ring) write(p []byte, every uint64) (int, error) {
	pr := &r.prod
	// The common case, a write that fits in the room this side already knows of, in one copy.
	if m := uint64(len(p)); m <= r.n-r.used(pr.pos, pr.peer) && m > 0 && r.h.state() == 0 {
		off := r.offset(pr.pos)
		copy(r.buf[off:off+m], p)
		r.wrote(m, every)
		return len(p), nil
	}
	pr.peer = r.h.tail.Load() // the known room was too small: look at the consumer's tail
	done := 0
	for done < len(p) {
		s, err := r.writeSlice(1)
		if err != nil {
			return done, err
		}
		k := copy(s, p[done:])
		r.wrote(uint64(k), every)
		done += k
	}
	return done, nil
}

// wrote moves the producer past k bytes it wrote, and publishes them with those before once
// at least every bytes are unpublished.
func (r *Ring) wrote(k, every uint64) {
	pr := &r.prod
	pr.pos = r.advance(pr.pos, k)
	pr.lent = 0
	if r.used(pr.pos, pr.pub) >= every {
		r.publish(&r.prod)
	}
}

// ReadFrom reads from src straight into the ring's free space until src returns io.EOF
// (io.ReaderFrom, so io.Copy(ring, src) copies once, not twice). It does not call CloseWrite.
// Producer only.
func (r *Ring) ReadFrom(src io.Reader) (int64, error) {
	if err := r.enter(&r.prod); err != nil {
		return 0, err
	}
	defer r.exit(&r.prod)
	var total int64
	for {
		s, err := r.writeSlice(1)
		if err != nil {
			return total, err
		}
		k, err := src.Read(s)
		if k < 0 || k > len(s) {
			return total, fmt.Errorf("ring: ReadFrom: source returned %d bytes for a %d-byte buffer", k, len(s))
		}
		r.pass(&r.prod, uint64(k))
		total += int64(k)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Read copies up to len(p) readable bytes into p (io.Reader), waiting for at least one. It
// returns io.EOF after CloseWrite once the ring is drained. Consumer only.
func (r *Ring) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := r.enter(&r.cons); err != nil {
		return 0, err
	}
	s, err := r.readSlice(1)
	k := copy(p, s) // s is nil on error
	if k > 0 {
		r.pass(&r.cons, uint64(k))
	}
	r.exit(&r.cons)
	return k, err
}

// WriteTo hands the ring's bytes to w as they arrive, without copying them first (io.WriterTo,
// so io.Copy(dst, ring) copies once), until CloseWrite and the ring is drained. Consumer only.
func (r *Ring) WriteTo(w io.Writer) (int64, error) {
	if err := r.enter(&r.cons); err != nil {
		return 0, err
	}
	defer r.exit(&r.cons)
	var total int64
	for {
		s, err := r.readSlice(1)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		k, err := w.Write(s)
		if k < 0 || k > len(s) {
			return total, fmt.Errorf("ring: WriteTo: writer returned %d for %d bytes", k, len(s))
		}
		r.pass(&r.cons, uint64(k))
		total += int64(k)
		if err != nil {
			return total, err
		}
		if k < len(s) {
			return total, io.ErrShortWrite
		}
	}
}

// CloseWrite tells the consumer that nothing more will be written: once it has read everything,
// Read, ReadSlice and NextRecord return io.EOF and WriteTo returns. It first publishes what a
// Writer buffered and the records reserved and not yet submitted. Later producer calls return
// ErrClosed. Producer only.
func (r *Ring) CloseWrite() error {
	if err := r.enter(&r.prod); err != nil {
		return err
	}
	defer r.exit(&r.prod)
	if r.h.state() == 0 && r.prod.pos != r.prod.pub {
		r.publish(&r.prod)
	}
	r.h.stateOr(stateWriteDone)
	r.h.reader.waiting.Store(0)
	r.cons.w.wake(&r.h.reader.seq)
	return nil
}

// Close shuts the ring down and releases its memory. A side waiting in this process or, for a
// shared ring, in the other process wakes up with ErrClosed. Close waits for calls running in
// this process to return (they return quickly once woken), then unmaps; slices obtained from
// WriteSlice or ReadSlice must not be used after it. A second Close waits for the first and
// returns nil.
func (r *Ring) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		<-r.done
		return nil
	}
	// Shut the ring down for both sides before waiting for them. The header is still mapped:
	// only this function unmaps it, below.
	h := r.h
	h.stateOr(stateClosed)
	h.reader.waiting.Store(0)
	h.writer.waiting.Store(0)
	r.cons.w.wake(&h.reader.seq)
	r.prod.w.wake(&h.writer.seq)
	heavyFence() // after closed is set, before the flags are read: see active.go
	for r.prod.active.load() != 0 || r.cons.active.load() != 0 || r.misc.Load() != 0 {
		<-r.closeCh
	}
	r.peer.close()
	err := r.mem.release()
	close(r.done)
	return err
}

func (h *header) state() uint32 { return h.stateBits.Load() }

func (h *header) stateOr(bits uint32) { h.stateBits.Or(bits) }
