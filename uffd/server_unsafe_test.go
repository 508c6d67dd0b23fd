package uffd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"golang.org/x/sys/unix"
)

// Helpers of the server tests. Touchers access served memory with plain Go loops only (never
// copy, clear or bytes.Equal): see the package documentation.

var srvPage = os.Getpagesize()

// srvMap maps n bytes read-write with flags; the caller unmaps it with srvUnmap.
func srvMap(t testing.TB, n, flags int) uintptr {
	t.Helper()
	r, _, errno := unix.Syscall6(unix.SYS_MMAP, 0, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, uintptr(flags), ^uintptr(0), 0)
	if errno != 0 {
		t.Fatalf("mmap %d bytes: %v", n, errno)
	}
	return r
}

func srvShared(t testing.TB, n int) uintptr {
	return srvMap(t, n, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
}

func srvUnmap(t testing.TB, a uintptr, n int) {
	t.Helper()
	if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, a, uintptr(n), 0); errno != 0 {
		t.Errorf("munmap %#x: %v", a, errno)
	}
}

// srvDup duplicates [a, a+n) of a shared mapping with mremap(a, 0, n, MREMAP_MAYMOVE).
func srvDup(t testing.TB, a uintptr, n int) uintptr {
	t.Helper()
	r, _, errno := unix.Syscall6(unix.SYS_MREMAP, a, 0, uintptr(n), unix.MREMAP_MAYMOVE, 0, 0)
	if errno != 0 {
		t.Fatalf("mremap duplicate: %v", errno)
	}
	return r
}

func srvMadvise(t testing.TB, a uintptr, n int, advice int) {
	t.Helper()
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, a, uintptr(n), uintptr(advice)); errno != 0 {
		t.Fatalf("madvise(%d): %v", advice, errno)
	}
}

// srvMem views n bytes at a.
func srvMem(a uintptr, n int) []byte { return unsafe.Slice((*byte)(unsafe.Add(nil, a)), n) }

// srvUFFD opens a userfaultfd with features and registers nothing.
func srvUFFD(t testing.TB, f Feature) *UFFD {
	t.Helper()
	u, err := New(WithFeatures(f))
	if err != nil {
		t.Fatalf("New(%v): %v", f, err)
	}
	return u
}

func srvRegister(t testing.TB, u *UFFD, a uintptr, n int, m Mode) {
	t.Helper()
	if err := u.Register(a, n, m); err != nil {
		t.Fatalf("Register %#x+%d %v: %v", a, n, m, err)
	}
}

// pattern is a source whose byte at offset o is patternByte(seed, o).
type pattern struct {
	seed byte
	size int64 // 0: unlimited
}

func patternByte(seed byte, o int64) byte {
	return byte(o/int64(srvPage))*31 + byte(o%251) + seed
}

func (p pattern) ReadAt(b []byte, off int64) (int, error) {
	n := len(b)
	var err error
	if p.size > 0 {
		if off >= p.size {
			return 0, io.EOF
		}
		if off+int64(n) > p.size {
			n = int(p.size - off)
			err = io.EOF
		}
	}
	for i := 0; i < n; i++ {
		b[i] = patternByte(p.seed, off+int64(i))
	}
	return n, err
}

// failing is a source that fails on one page while bad is set.
type failing struct {
	pattern
	badOff int64
	bad    atomic.Bool
	err    error
}

func (f *failing) ReadAt(b []byte, off int64) (int, error) {
	if f.bad.Load() && off <= f.badOff && f.badOff < off+int64(len(b)) {
		n, _ := f.pattern.ReadAt(b[:f.badOff-off], off)
		return n, f.err
	}
	return f.pattern.ReadAt(b, off)
}

// srvVerify checks with a plain loop that [a, a+n) holds src's bytes from offset off (nil src:
// zeros), returning the first mismatch.
func srvVerify(a uintptr, n int, seed byte, zero bool, off int64) error {
	m := srvMem(a, n)
	for i := 0; i < n; i++ {
		want := byte(0)
		if !zero {
			want = patternByte(seed, off+int64(i))
		}
		if m[i] != want {
			return fmt.Errorf("byte %d of %#x: got %d, want %d", i, a, m[i], want)
		}
	}
	return nil
}

// srvTouch reads one byte of every page of [a, a+n) in the order given by pages (page indexes),
// in a new goroutine, and reports the sum.
func srvTouch(a uintptr, pages []int) <-chan int {
	ch := make(chan int, 1)
	go func() {
		m := srvMem(a, (pagesMax(pages)+1)*srvPage)
		s := 0
		for _, p := range pages {
			s += int(m[p*srvPage])
		}
		ch <- s
	}()
	return ch
}

func pagesMax(p []int) int {
	m := 0
	for _, v := range p {
		if v > m {
			m = v
		}
	}
	return m
}

func seq(from, to int) []int {
	var p []int
	for i := from; i < to; i++ {
		p = append(p, i)
	}
	return p
}

// srvWait waits for ch; the timeout only keeps a broken test from hanging the run.
func srvWait[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no result after 30 s", what)
	}
	panic("unreachable")
}

// srvRun is a Serve running in a goroutine.
type srvRun struct {
	s      *Server
	cancel context.CancelFunc
	c      chan error
}

// srvStart runs s.Serve in a goroutine.
func srvStart(t testing.TB, s *Server) (*srvRun, <-chan error) {
	r := &srvRun{s: s}
	r.start()
	return r, r.c
}

func (r *srvRun) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.c = cancel, make(chan error, 1)
	go func() { r.c <- r.s.Serve(ctx) }()
}

// stop closes the server and returns what Serve returned.
func (r *srvRun) stop(t testing.TB) error {
	t.Helper()
	r.s.Close()
	r.cancel()
	return srvWait(t, r.c, "Serve after Close")
}

// settle ends the running Serve by cancelling its context, which waits for the faults in
// progress to be counted, and starts a new one. A resolve wakes the faulting thread before the
// server counts it, so counters are read after this.
func (r *srvRun) settle(t testing.TB) {
	t.Helper()
	r.cancel()
	if err := srvWait(t, r.c, "Serve after cancel"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v", err)
	}
	r.start()
}

func srvStopOK(t testing.TB, r *srvRun) {
	t.Helper()
	if err := r.stop(t); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", err)
	}
}

var srvSink int

// srvLeakCheck fails t if the test left fds or shared mappings behind (the server reserves no
// address space, so the Go runtime's PROT_NONE reservations are ignored).
func srvLeakCheck(t testing.TB) func() {
	t.Helper()
	return leakcheck.CheckShared(t)
}

func srvAddrOfMem(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
