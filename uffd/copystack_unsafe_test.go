package uffd

import (
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Copy's source may be a buffer on the caller's goroutine stack, which the runtime moves when
// the stack grows. With GODEBUG=efence=1 a stack the runtime gave up is made inaccessible, so a
// kernel read through a stale address fails with EFAULT instead of silently copying old bytes.
// The helper calls Copy from fresh goroutines at many depths, so that the stack grows on the
// way into Copy, and checks every copied page.
func TestCopyFromMovingStack(t *testing.T) {
	out := runHelper(t, helperCmd(t, "copy-stack", "GODEBUG=efence=1"))
	if !strings.Contains(out, "PASS: copy-stack") {
		t.Fatalf("helper did not report:\n%s", out)
	}
}

func init() { helpers["copy-stack"] = copyStackHelper }

var copyStackU *UFFD

//go:noinline
func copyStackLeaf(dst uintptr, v byte) (err error, moved bool) {
	var buf [4096]byte
	for i := range buf {
		buf[i] = v
	}
	before := uintptr(unsafe.Pointer(&buf[0]))
	_, err = copyStackU.Copy(dst, unsafe.Pointer(&buf[0]), len(buf), 0)
	return err, before != uintptr(unsafe.Pointer(&buf[0]))
}

//go:noinline
func copyStackRecurse(d int, dst uintptr, v byte) (error, bool) {
	var pad [3]uintptr
	pad[d%3] = uintptr(d)
	if d == 0 {
		return copyStackLeaf(dst+pad[0]*0, v)
	}
	return copyStackRecurse(d-1, dst+pad[0]*0, v)
}

func copyStackHelper() int {
	var c check
	u, err := New()
	if err != nil {
		fmt.Println("FAIL:", err)
		return 1
	}
	defer u.Close()
	copyStackU = u
	const pages = 1024
	mem, err := unix.Mmap(-1, 0, pages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println("FAIL:", err)
		return 1
	}
	defer unix.Munmap(mem)
	if err := u.Register(AddrOf(mem), len(mem), ModeMissing); err != nil {
		fmt.Println("FAIL:", err)
		return 1
	}
	moved, failed, wrong := 0, 0, 0
	for p := 0; p < pages; p++ {
		v := byte(p%251 + 1)
		type res struct {
			err   error
			moved bool
		}
		ch := make(chan res, 1)
		go func() {
			e, m := copyStackRecurse(p%400, AddrOf(mem)+uintptr(p)*4096, v)
			ch <- res{e, m}
		}()
		r := <-ch
		if r.moved {
			moved++
		}
		if r.err != nil {
			if failed < 3 {
				fmt.Printf("page %d depth %d: %v (stack moved: %v)\n", p, p%400, r.err, r.moved)
			}
			failed++
			continue
		}
		for i := p * 4096; i < (p+1)*4096; i++ { // a plain loop: the pages are resolved already
			if mem[i] != v {
				wrong++
				break
			}
		}
	}
	fmt.Printf("%d copies, stack moved during %d, %d failed, %d wrong\n", pages, moved, failed, wrong)
	if moved == 0 {
		c.fail("the stack never moved during Copy: the test proves nothing")
	}
	if failed != 0 || wrong != 0 {
		c.fail("Copy read a stale stack address: %d errors, %d pages with wrong data", failed, wrong)
	} else {
		c.pass("copy-stack")
	}
	return c.code()
}
