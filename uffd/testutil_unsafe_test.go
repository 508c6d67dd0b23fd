package uffd

import (
	"errors"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var pg = os.Getpagesize()

// mmapT maps n bytes (PROT_READ|PROT_WRITE) with flags and unmaps them when the test ends.
func mmapT(t testing.TB, n, flags int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

func anonT(t testing.TB, n int) []byte  { return mmapT(t, n, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS) }
func shmemT(t testing.TB, n int) []byte { return mmapT(t, n, unix.MAP_SHARED|unix.MAP_ANONYMOUS) }

// dupView maps the same shmem pages a second time with the mremap duplicate (old_size 0).
func dupView(t testing.TB, b []byte) []byte {
	t.Helper()
	r, _, errno := unix.Syscall6(unix.SYS_MREMAP, addr(b), 0, uintptr(len(b)), unix.MREMAP_MAYMOVE, 0, 0)
	if errno != 0 {
		t.Fatalf("mremap duplicate: %v", errno)
	}
	// The kernel's answer is an address outside the Go heap; convert it without vet's complaint
	// about uintptr-to-pointer conversions, which guard Go-heap memory.
	v := unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&r))), len(b))
	t.Cleanup(func() { unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(v)), uintptr(len(v))) })
	return v
}

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func newT(t testing.TB, opts ...Option) *UFFD {
	t.Helper()
	u, err := New(opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// readMsgs waits (at most 20 s, a guard against a hung test, never a synchronisation) for
// messages with poll(2) and reads them.
func readMsgs(t testing.TB, u *UFFD, msgs []Msg) int {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := u.TryReadMessages(msgs)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if n > 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no userfaultfd message within 20 s")
		}
		pfd := []unix.PollFd{{Fd: int32(u.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 1000); err != nil && !errors.Is(err, unix.EINTR) {
			t.Fatalf("poll: %v", err)
		}
	}
}

// readOne reads exactly one message.
func readOne(t testing.TB, u *UFFD) Msg {
	t.Helper()
	var m [1]Msg
	readMsgs(t, u, m[:])
	return m[0]
}

// noMsg fails if a message is pending.
func noMsg(t testing.TB, u *UFFD) {
	t.Helper()
	var m [1]Msg
	n, err := u.TryReadMessages(m[:])
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("unexpected message %v", &m[0])
	}
}

// The touchers access memory with plain Go loops only: never copy(), clear() or bytes.Equal on
// memory an in-process handler serves (a fault inside runtime assembly can deadlock the
// garbage collector against the handler).

// sumAsync sums one byte per page of b in a new goroutine and delivers the sum.
func sumAsync(b []byte) <-chan int {
	ch := make(chan int, 1)
	go func() {
		s := 0
		for i := 0; i < len(b); i += pg {
			s += int(b[i])
		}
		ch <- s
	}()
	return ch
}

// waitT waits for ch: srvWait by its older name.
func waitT[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	return srvWait(t, ch, what)
}

// notDone asserts that ch has not delivered yet. It can only prove "not yet": used after the
// kernel has queued the fault (its message was read), which means the toucher is asleep in it.
func notDone[T any](t testing.TB, ch <-chan T, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: finished, expected it blocked", what)
	default:
	}
}

// page returns a page-sized buffer filled with v (ordinary heap memory, not registered).
func page(v byte) []byte {
	b := make([]byte, pg)
	for i := range b {
		b[i] = v
	}
	return b
}

func ptrOf(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

// bytesOf views n bytes at a mapping the kernel returned (unmapped when the test ends).
func bytesOf(t testing.TB, a uintptr, n int) []byte {
	v := unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&a))), n)
	t.Cleanup(func() { unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(v)), uintptr(len(v))) })
	return v
}
