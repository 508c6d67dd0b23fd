package uffd

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rawMsg builds the bytes of a struct uffd_msg as the kernel lays it out.
func rawMsg(event byte, a, b, c uint64) Msg {
	var m Msg
	m[0] = event
	binary.LittleEndian.PutUint64(m[8:], a)
	binary.LittleEndian.PutUint64(m[16:], b)
	binary.LittleEndian.PutUint64(m[24:], c)
	return m
}

func TestMsgDecode(t *testing.T) {
	t.Parallel()
	pf := rawMsg(0x12, uint64(FlagWrite|FlagWP), 0x7f0000001234, 4321)
	if pf.Event() != EventPagefault || pf.Flags() != FlagWrite|FlagWP || pf.Address() != 0x7f0000001234 || pf.ThreadID() != 4321 {
		t.Errorf("pagefault: %v", &pf)
	}
	if s := pf.String(); s != "pagefault addr=0x7f0000001234 flags=write|wp tid=4321" {
		t.Errorf("pagefault string %q", s)
	}
	fork := rawMsg(0x13, 17, 0, 0)
	if fork.Event() != EventFork || fork.ForkFD() != 17 || fork.String() != "fork ufd=17" {
		t.Errorf("fork: %v", &fork)
	}
	remap := rawMsg(0x14, 0x1000, 0x9000, 0)
	if f, to, l := remap.Remap(); remap.Event() != EventRemap || f != 0x1000 || to != 0x9000 || l != 0 {
		t.Errorf("remap: %v", &remap)
	}
	for _, ev := range []Event{EventRemove, EventUnmap} {
		m := rawMsg(byte(ev), 0x2000, 0x5000, 0)
		if s, e := m.Range(); m.Event() != ev || s != 0x2000 || e != 0x5000 {
			t.Errorf("%v: %v", ev, &m)
		}
		if !strings.HasPrefix(m.String(), ev.String()+" [0x2000, 0x5000)") {
			t.Errorf("%v string %q", ev, m.String())
		}
	}
	if s := Event(0x77).String(); s != "event(0x77)" {
		t.Errorf("unknown event %q", s)
	}
	if s := (FlagMinor | 1<<9).String(); s != "minor|0x200" {
		t.Errorf("flags %q", s)
	}
}

// FuzzMsg decodes arbitrary bytes as a message: no accessor may panic, and each must read the
// field where struct uffd_msg has it.
// The layouts of struct uffd_msg (include/uapi/linux/userfaultfd.h, __packed), one Go struct
// per member of its union, field by field as the header declares them. encoding/binary lays
// them out independently of Msg's accessors, so a wrong offset in an accessor shows.
type (
	cMsgHeader struct {
		Event     uint8
		Reserved1 uint8
		Reserved2 uint16
		Reserved3 uint32
	}
	cPagefault struct {
		cMsgHeader
		Flags   uint64
		Address uint64
		Ptid    uint32 // union feat { __u32 ptid; }
		_       uint32 // the union's tail up to 32 bytes
	}
	cFork struct {
		cMsgHeader
		Ufd uint32
		_   [20]byte
	}
	cRemap struct {
		cMsgHeader
		From, To, Len uint64
	}
	cRemove struct {
		cMsgHeader
		Start, End uint64
		_          uint64
	}
)

// decodeC reads the 32 bytes of m into v, a C-layout struct, with encoding/binary.
func decodeC(t *testing.T, m *Msg, v any) {
	t.Helper()
	if n := binary.Size(v); n != sizeofMsg {
		t.Fatalf("%T is %d bytes, struct uffd_msg has %d", v, n, sizeofMsg)
	}
	if err := binary.Read(bytes.NewReader(m[:]), binary.LittleEndian, v); err != nil {
		t.Fatal(err)
	}
}

// FuzzMsg decodes arbitrary bytes as a message twice, with Msg's accessors and with
// encoding/binary into the C-layout structs above, and requires the same fields from both;
// String must never panic.
func FuzzMsg(f *testing.F) {
	for _, m := range []Msg{
		rawMsg(0x12, uint64(FlagWrite), 0x7fff00001000, 99),
		rawMsg(0x13, 5, 0, 0),
		rawMsg(0x14, 0x1000, 0x2000, 4096),
		rawMsg(0x16, 0x1000, 0x3000, 0),
	} {
		f.Add(m[:])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < sizeofMsg {
			return
		}
		var m Msg
		for i := range m {
			m[i] = data[i]
		}
		var pf cPagefault
		decodeC(t, &m, &pf)
		if m.Event() != Event(pf.Event) || uint64(m.Flags()) != pf.Flags || uint64(m.Address()) != pf.Address || m.ThreadID() != pf.Ptid {
			t.Fatalf("pagefault: accessors %v, C layout %+v", &m, pf)
		}
		var fk cFork
		decodeC(t, &m, &fk)
		if m.ForkFD() != int(fk.Ufd) {
			t.Fatalf("fork: ForkFD %d, C layout ufd %d", m.ForkFD(), fk.Ufd)
		}
		var rm cRemap
		decodeC(t, &m, &rm)
		if from, to, l := m.Remap(); uint64(from) != rm.From || uint64(to) != rm.To || l != rm.Len {
			t.Fatalf("remap: accessors %#x %#x %d, C layout %+v", from, to, l, rm)
		}
		var rv cRemove
		decodeC(t, &m, &rv)
		if s, e := m.Range(); uint64(s) != rv.Start || uint64(e) != rv.End {
			t.Fatalf("remove/unmap: accessors %#x %#x, C layout %+v", s, e, rv)
		}
		if str := m.String(); !strings.HasPrefix(str, m.Event().String()) {
			t.Fatalf("String %q does not start with the event %q", str, m.Event())
		}
		_ = m.Flags().String()
	})
}

// TestReadManyMessagesOneRead makes eight goroutines fault on eight pages, waits until the
// kernel has queued all eight faults (fdinfo "pending"), and reads them with one read(2). The
// faults are raised inside madvise(MADV_POPULATE_WRITE): a goroutine blocked in a system call
// gives its P back, where one blocked in a user-mode fault would keep it (and with every P held
// that way, the handler could not run).
func TestReadManyMessagesOneRead(t *testing.T) {
	t.Parallel()
	const n = 8
	u := newT(t, WithFeatures(FeatureThreadID))
	mem := anonT(t, n*pg)
	if err := u.Register(addr(mem), len(mem), ModeMissing); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(b []byte) { // a write: the kernel sets FlagWrite
			defer wg.Done()
			if err := unix.Madvise(b, unix.MADV_POPULATE_WRITE); err != nil {
				t.Errorf("MADV_POPULATE_WRITE: %v", err)
			}
		}(mem[i*pg : (i+1)*pg])
	}
	waitPending(t, u, n)
	var msgs [2 * n]Msg
	got, err := u.ReadMessages(msgs[:])
	if err != nil {
		t.Fatal(err)
	}
	if got < n {
		t.Fatalf("one read returned %d messages with %d pending", got, n)
	}
	seen := map[uintptr]bool{}
	for i := range msgs[:got] {
		m := &msgs[i]
		if m.Event() != EventPagefault || m.Flags()&FlagWrite == 0 || m.ThreadID() == 0 {
			t.Errorf("message %v", m)
		}
		a := m.Address()
		if a < addr(mem) || a >= addr(mem)+uintptr(len(mem)) || a%uintptr(pg) != 0 {
			t.Errorf("address %#x outside the range or not page aligned", a)
		}
		seen[a] = true
	}
	if len(seen) != n {
		t.Errorf("%d distinct pages, want %d", len(seen), n)
	}
	if _, err := u.ZeroPage(addr(mem), len(mem), 0); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

// waitPending waits until the kernel has queued n unread faults (a condition, checked in a
// loop; the 20 s limit only guards against a hung test).
func waitPending(t testing.TB, u *UFFD, n uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, ok := readFdinfo(u.Fd())
		if !ok {
			t.Fatal("no fdinfo")
		}
		if info.pending >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d faults pending after 20 s, want %d", info.pending, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// allocsPerRun is testing.AllocsPerRun without its GOMAXPROCS(1): with a single P, a goroutine
// blocked in a userfault holds the P, and the handler goroutine of the same process only runs
// when the faulting one is preempted, which withdraws its unread fault message: a livelock.
// Tests that use it must not be parallel (the count is process-wide).
func allocsPerRun(runs int, f func()) float64 {
	for i := 0; i < 5; i++ {
		f()
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < runs; i++ {
		f()
	}
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / float64(runs)
}

// TestReadMessagesAllocatesNothing: reading and decoding a fault, and resolving it, allocate
// nothing. The toucher is one long-lived goroutine driven through atomics (a channel that blocks
// may allocate a sudog, which would be counted); MADV_DONTNEED makes the same private page fault
// again.
func TestReadMessagesAllocatesNothing(t *testing.T) {
	u := newT(t, WithFeatures(FeatureThreadID))
	mem := anonT(t, pg)
	if err := u.Register(addr(mem), pg, ModeMissing); err != nil {
		t.Fatal(err)
	}
	var round, done atomic.Int64
	go func() { // faults inside madvise(2): a goroutine in a system call leaves its P free
		for r := int64(1); ; r++ {
			for x := round.Load(); x < r; x = round.Load() {
				if x < 0 {
					return
				}
				runtime.Gosched()
			}
			unix.Madvise(mem, unix.MADV_POPULATE_READ)
			done.Store(r)
		}
	}()
	defer round.Store(-1 << 40)
	var msgs [4]Msg
	var bad int
	allocs := allocsPerRun(100, func() {
		r := round.Add(1)
		n, err := u.ReadMessages(msgs[:])
		if err != nil || n < 1 || msgs[0].Event() != EventPagefault || msgs[0].ThreadID() == 0 {
			bad++
		}
		_ = msgs[0].Address() + uintptr(msgs[0].Flags())
		if _, err := u.ZeroPage(addr(mem), pg, 0); err != nil {
			bad++
		}
		for done.Load() != r {
			runtime.Gosched()
		}
		if err := unix.Madvise(mem, unix.MADV_DONTNEED); err != nil {
			bad++
		}
	})
	if bad != 0 {
		t.Fatalf("%d failed steps", bad)
	}
	// The count is process-wide: the runtime itself allocates now and then while this runs
	// (a new M for the thread blocked in the fault, GC workers), well under one per run, so
	// anything below 0.5 means the read, the decoding and the resolve allocate nothing.
	if allocs >= 0.5 {
		t.Fatalf("%v allocations per fault read and resolved, want 0", allocs)
	}
}
