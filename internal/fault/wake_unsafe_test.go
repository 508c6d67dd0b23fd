package fault

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// readFaults reads messages until want page faults arrived, returning them.
func readFaults(t *testing.T, u *uffd.UFFD, want int) []uffd.Msg {
	t.Helper()
	var got []uffd.Msg
	var msgs [8]uffd.Msg
	for len(got) < want {
		k, err := u.ReadMessages(msgs[:])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, msgs[:k]...)
	}
	return got
}

// pollQuiet reports whether the uffd stays without a message for ms milliseconds.
func pollQuiet(t *testing.T, u *uffd.UFFD, ms int) bool {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, ms)
	if err != nil {
		t.Fatal(err)
	}
	return n == 0
}

// Kernel fact: a COPY into view A wakes the threads blocked on that page through A only; a
// thread blocked on the same page through view B sleeps until someone wakes B's range. (That is
// why every handler here wakes every view.)
func TestCopyDoesNotWakeTheOtherView(t *testing.T) {
	const n = pg
	f, data := sourceFile(t, pg)
	p := newTestPair(t, n, uffd.ModeMissing|uffd.ModeMinor, uffd.FeatureMinorShmem)
	// The blocked threads are inside read(2) (a fault taken by the kernel): the Go runtime sends
	// no preemption signal to a thread in a system call, and a signal would make the thread
	// fault again, which is not the wake this test looks for.
	doneA, doneB := make(chan error), make(chan error)
	go func() { _, err := unix.Pread(int(f.Fd()), p.orig, 0); doneA <- err }()
	go func() { _, err := unix.Pread(int(f.Fd()), p.dup, 0); doneB <- err }()
	// The same fault can still arrive more than once; read until both views have faulted.
	views := map[uintptr]bool{}
	for len(views) < 2 {
		for _, m := range readFaults(t, p.u, 1) {
			if a := m.Address(); a != addrOf(p.orig) && a != addrOf(p.dup) {
				t.Fatalf("fault at %#x, outside the views", a)
			}
			views[m.Address()] = true
		}
	}
	page := make([]byte, pg)
	page[0] = 5
	if _, err := p.u.Copy(addrOf(p.orig), unsafe.Pointer(&page[0]), pg, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-doneA; err != nil {
		t.Fatalf("read into view A: %v", err)
	}
	// Had the COPY woken the thread on view B, it would fault again at once with a minor fault
	// (the page is now cached). Repeats of its first (missing) fault, raised by signals, are
	// not that.
	for !pollQuiet(t, p.u, 300) {
		for _, m := range readFaults(t, p.u, 1) {
			if m.Flags()&uffd.FlagMinor != 0 {
				t.Fatalf("the thread blocked through the other view was woken by the COPY: %v", m.String())
			}
		}
	}
	select {
	case <-doneB:
		t.Fatal("the thread blocked through the other view went on after a COPY through the first")
	default:
	}
	if err := p.u.Wake(addrOf(p.dup), pg); err != nil {
		t.Fatal(err)
	}
	for minor := false; !minor; {
		for _, m := range readFaults(t, p.u, 1) {
			minor = minor || m.Address() == addrOf(p.dup) && m.Flags()&uffd.FlagMinor != 0
		}
	}
	if _, err := p.u.Continue(addrOf(p.dup), pg, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-doneB; err != nil {
		t.Fatalf("read into view B: %v", err)
	}
	if sum(p.orig) != sum(data) {
		t.Fatal("the views do not hold what read(2) wrote")
	}
}

// Kernel fact: while a non-cooperative event (here REMOVE, from MADV_DONTNEED) is unread, every
// resolving ioctl answers EAGAIN, and madvise blocks until the event is read.
func TestPendingEventMakesResolvesEAGAIN(t *testing.T) {
	const n = 2 * pg
	p := newTestPair(t, n, uffd.ModeMissing, uffd.FeatureEventRemove)
	page := make([]byte, pg)
	if _, err := p.u.Copy(addrOf(p.orig), unsafe.Pointer(&page[0]), pg, 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- unix.Madvise(p.orig[:pg], unix.MADV_DONTNEED) }()
	pfd := []unix.PollFd{{Fd: int32(p.u.Fd()), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, -1); err != nil { // the REMOVE event is queued
		t.Fatal(err)
	}
	if _, err := p.u.Copy(addrOf(p.orig)+pg, unsafe.Pointer(&page[0]), pg, 0); errnoOf(err) != unix.EAGAIN {
		t.Fatalf("COPY with an unread REMOVE event: %v, want EAGAIN", err)
	}
	if _, err := p.u.ZeroPage(addrOf(p.orig)+pg, pg, 0); errnoOf(err) != unix.EAGAIN {
		t.Fatalf("ZEROPAGE with an unread REMOVE event: %v, want EAGAIN", err)
	}
	var msgs [4]uffd.Msg
	k, err := p.u.ReadMessages(msgs[:])
	if err != nil || k != 1 || msgs[0].Event() != uffd.EventRemove {
		t.Fatalf("want the REMOVE event, got %d %v", k, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := p.u.Copy(addrOf(p.orig)+pg, unsafe.Pointer(&page[0]), pg, 0); err != nil {
		t.Fatalf("COPY once the event was read: %v", err)
	}
}
