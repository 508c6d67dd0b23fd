package fault

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"github.com/mirrormem/mirrormem/internal/mem/memtest"
	"github.com/mirrormem/mirrormem/uffd"
)

// testPair is a shared anonymous mapping and its mremap duplicate, both registered on one uffd.
type testPair struct {
	orig, dup []byte
	u         *uffd.UFFD
}

func sliceAt(addr uintptr, n int) []byte {
	return unsafe.Slice(*(**byte)(unsafe.Pointer(&addr)), n)
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func newTestPair(t testing.TB, n int, mode uffd.Mode, feats uffd.Feature) *testPair {
	t.Helper()
	return pairOver(t, -1, n, mode, feats)
}

// pairOver maps fd (or shared anonymous memory for fd -1), duplicates the mapping with mremap
// and registers both views with mode on a new userfaultfd.
func pairOver(t testing.TB, fd, n int, mode uffd.Mode, feats uffd.Feature) *testPair {
	t.Helper()
	flags := unix.MAP_SHARED
	if fd < 0 {
		flags |= unix.MAP_ANONYMOUS
	}
	orig, err := unix.Mmap(fd, 0, n, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		t.Fatal(err)
	}
	r, _, errno := unix.Syscall6(unix.SYS_MREMAP, addrOf(orig), 0, uintptr(n), unix.MREMAP_MAYMOVE, 0, 0)
	if errno != 0 {
		unix.Munmap(orig)
		t.Fatalf("mremap duplicate: %v", errno)
	}
	p := &testPair{orig: orig, dup: sliceAt(r, n)}
	p.u, err = uffd.New(uffd.WithFeatures(feats | uffd.FeatureMissingShmem | uffd.FeatureThreadID))
	if err != nil {
		p.unmap()
		t.Fatal(err)
	}
	for _, v := range [][]byte{p.orig, p.dup} {
		if err := p.u.Register(addrOf(v), n, mode); err != nil {
			p.close()
			t.Fatal(err)
		}
	}
	t.Cleanup(p.close)
	return p
}

func (p *testPair) unmap() {
	if p.orig != nil {
		unix.Munmap(p.orig)
		p.orig = nil
	}
	if p.dup != nil {
		unix.Syscall(unix.SYS_MUNMAP, addrOf(p.dup), uintptr(len(p.dup)), 0)
		p.dup = nil
	}
}

func (p *testPair) close() {
	if p.u != nil {
		p.u.Close()
		p.u = nil
	}
	p.unmap()
}

func (p *testPair) views() []uintptr { return []uintptr{addrOf(p.orig), addrOf(p.dup)} }

// sourceFile writes n bytes of a pattern into a temporary file and returns it.
func sourceFile(t testing.TB, n int) (*os.File, []byte) {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i*7 + i/4096)
	}
	return memtest.TempFile(t, data), data
}

// checkLeaks compares fds and shared mappings only: this package reserves no address space.
func checkLeaks(t testing.TB) func() {
	t.Helper()
	return leakcheck.CheckShared(t)
}

// newMemfdPair is newTestPair over a memfd object, whose descriptor is returned too.
func newMemfdPair(t testing.TB, n int, mode uffd.Mode, feats uffd.Feature) (*testPair, int) {
	t.Helper()
	fd, err := unix.MemfdCreate("fault-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(n)); err != nil {
		t.Fatal(err)
	}
	return pairOver(t, fd, n, mode, feats), fd
}

func madvise(t testing.TB, b []byte, advice int) {
	t.Helper()
	if err := unix.Madvise(b, advice); err != nil {
		t.Fatalf("madvise %d: %v", advice, err)
	}
}

// duplicate makes another view of b with the mremap duplicate.
func duplicate(t testing.TB, b []byte) []byte {
	t.Helper()
	r, _, errno := unix.Syscall6(unix.SYS_MREMAP, addrOf(b), 0, uintptr(len(b)), unix.MREMAP_MAYMOVE, 0, 0)
	if errno != 0 {
		t.Fatalf("mremap duplicate: %v", errno)
	}
	d := sliceAt(r, len(b))
	t.Cleanup(func() { unix.Syscall(unix.SYS_MUNMAP, r, uintptr(len(b)), 0) })
	return d
}

// noneLeft fails t at its end if goroutines of this module or child processes (handler
// processes) remain that were not there before; exits in progress are polled for up to 10 s.
func noneLeft(t testing.TB) {
	t.Helper()
	t.Cleanup(leakcheck.NoneLeft(t))
}
