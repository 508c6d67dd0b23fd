package mem

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// grow calls f below depth frames of padding, so that f runs at every distance from the end
// of a fresh goroutine's stack: if the stack of queryVMAs moves while the kernel holds an
// address inside it, the name of the mapping comes back wrong.
//
//go:noinline
func grow(depth int, f func()) {
	var pad [64]byte
	if depth == 0 {
		f()
		return
	}
	grow(depth-1, f)
	_ = pad
}

// PROCMAP_QUERY writes the mapping's name to a buffer whose address travels inside the ioctl's
// struct as an integer: the buffer must not be on a stack that can move.
func TestQueryNameAtAnyStackDepth(t *testing.T) {
	fd, err := unix.MemfdCreate("procmap-name-check", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ps := uintptr(PageSize())
	unix.Ftruncate(fd, int64(ps))
	p, err := Mmap(nil, ps, unix.PROT_READ, unix.MAP_SHARED, fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(p, ps)
	if _, ok, _ := queryVMAs(Addr(p), Addr(p)+1); !ok {
		t.Skip("kernel without PROCMAP_QUERY (6.11+)")
	}
	for depth := 0; depth < 200; depth++ {
		done := make(chan string)
		go grow(depth, func() {
			v, _, err := queryVMAs(Addr(p), Addr(p)+1)
			if err != nil || len(v) != 1 {
				done <- "error"
				return
			}
			done <- v[0].Path
		})
		if got := <-done; !strings.HasPrefix(got, "/memfd:procmap-name-check") {
			t.Fatalf("at depth %d the query returned path %q", depth, got)
		}
	}
}
