//go:build cgo

package uffd

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/loopholelabs/userfaultfd-go/pkg/mapper"
	"github.com/loopholelabs/userfaultfd-go/pkg/transfer"
	"golang.org/x/sys/unix"
)

// The real loopholelabs/userfaultfd-go transfer package on one end of the socket, this one on
// the other. (It needs cgo, hence the build tag; transfer_test.go checks the same frame with a
// re-enactment of its system calls, and runs without cgo.)

// Theirs to ours: a range registered by mapper.Register, sent with transfer.SendUFFD, received
// with ReceiveFD and served by this package.
func TestPeerSendUFFDToReceiveFD(t *testing.T) {
	t.Parallel()
	needFreeP(t)
	const pages = 8
	b, fd, start, err := mapper.Register(pages * pg)
	if err != nil {
		t.Fatalf("mapper.Register: %v", err)
	}
	defer syscall.Munmap(b)
	defer syscall.Close(int(fd))
	a, c := socketPair(t)
	if err := transfer.SendUFFD(a, fd, start); err != nil {
		t.Fatalf("transfer.SendUFFD: %v", err)
	}
	u, gotStart, err := ReceiveFD(c)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if gotStart != start {
		t.Fatalf("start %#x, sent %#x", gotStart, start)
	}
	done := sumPagesAsync(b)
	for served := map[uintptr]bool{}; len(served) < pages; {
		m := readOne(t, u)
		p := m.Address() &^ uintptr(pg-1)
		if _, err := u.CopyAll(p, page(byte((p-start)/uintptr(pg))+1), 0); err != nil {
			if !errors.Is(err, unix.EEXIST) {
				t.Fatal(err)
			}
			mustNil(t, u.Wake(p, pg), "wake")
		}
		served[p] = true
	}
	if s := waitT(t, done, "touching the peer's range"); s != patternSum(pages) {
		t.Fatalf("sum %d, want %d", s, patternSum(pages))
	}
}

// Ours to theirs: SendFD to transfer.ReceiveUFFD, served by mapper.Handle. Not parallel: it
// closes a descriptor the peer's receiver leaks, found by its target.
func TestSendFDToPeerReceiveUFFD(t *testing.T) {
	needFreeP(t)
	const pages = 8
	// EVENT_UNMAP gives a way to stop mapper.Handle: it returns on the first message that is
	// not a page fault.
	u := newT(t, WithFeatures(FeatureEventUnmap))
	mem, err := unix.Mmap(-1, 0, pages*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	mustNil(t, err, "mmap")
	mustNil(t, u.Register(addr(mem), len(mem), ModeMissing), "register")
	a, c := socketPair(t)
	nulls := devNullFDs(t)
	mustNil(t, SendFD(a, u, addr(mem)), "SendFD")
	theirs, start, err := transfer.ReceiveUFFD(c)
	if err != nil {
		t.Fatalf("transfer.ReceiveUFFD: %v", err)
	}
	defer syscall.Close(int(theirs))
	for fd := range devNullFDs(t) { // the placeholder, which the peer's receiver leaves open
		if !nulls[fd] {
			unix.Close(fd)
		}
	}
	if start != addr(mem) {
		t.Fatalf("peer got start %#x, sent %#x", start, addr(mem))
	}
	handled := make(chan error, 1)
	go func() { handled <- mapper.Handle(theirs, start, constReader(5)) }()
	if s := waitT(t, sumPagesAsync(mem), "touching pages the peer serves"); s != 5*pages {
		t.Fatalf("sum %d, want %d", s, 5*pages)
	}
	unmapped := make(chan error, 1)
	go func() { unmapped <- unix.Munmap(mem) }()
	if err := waitT(t, handled, "mapper.Handle"); !errors.Is(err, mapper.ErrUnexpectedEventType) {
		t.Fatalf("mapper.Handle returned %v, want its unexpected-event error", err)
	}
	mustNil(t, waitT(t, unmapped, "munmap"), "munmap")
}

// devNullFDs lists the descriptors open on /dev/null.
func devNullFDs(t testing.TB) map[int]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	mustNil(t, err, "readdir")
	out := map[int]bool{}
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/null" {
			out[atoi(e.Name())] = true
		}
	}
	return out
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// constReader is an io.ReaderAt of bytes v.
type constReader byte

func (r constReader) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}
