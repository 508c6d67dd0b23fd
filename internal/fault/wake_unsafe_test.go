package fault

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem/memtest"
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

// waiters reads the userfaultfd's /proc/self/fdinfo entry: pending counts the faulting threads
// whose message is unread, total every thread still waiting in a fault (read or not). This is
// the kernel's own account of who sleeps on the userfaultfd, as its selftests use it.
func waiters(t *testing.T, u *uffd.UFFD) (pending, total uint64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", u.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		switch k {
		case "pending":
			pending = n
		case "total":
			total = n
		}
	}
	return pending, total
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
	// The COPY's wake-up, if any, happened inside the ioctl. Had it woken the thread on view B,
	// that thread would have left the userfaultfd's wait queues and faulted again with a minor
	// fault (the page is now cached). Read every message (repeats of B's first missing fault,
	// raised by signals, are not that), then ask the kernel who still waits: exactly B's
	// thread, its message read.
	var msgs [8]uffd.Msg
	for {
		k, err := p.u.TryReadMessages(msgs[:])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs[:k] {
			if m.Flags()&uffd.FlagMinor != 0 {
				t.Fatalf("the thread blocked through the other view was woken by the COPY: %v", m.String())
			}
		}
		if pending, _ := waiters(t, p.u); k == 0 && pending == 0 {
			break
		}
	}
	if pending, total := waiters(t, p.u); pending != 0 || total != 1 {
		t.Fatalf("after the COPY through view A: %d unread and %d waiting faults, want 0 and 1 (the thread on view B, still asleep)", pending, total)
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
	memtest.Readable(t, p.u.Fd(), -1) // the REMOVE event is queued
	if _, err := p.u.Copy(addrOf(p.orig)+pg, unsafe.Pointer(&page[0]), pg, 0); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("COPY with an unread REMOVE event: %v, want EAGAIN", err)
	}
	if _, err := p.u.ZeroPage(addrOf(p.orig)+pg, pg, 0); !errors.Is(err, unix.EAGAIN) {
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
