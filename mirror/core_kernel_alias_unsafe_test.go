package mirror

import (
	"fmt"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

// storeThenLoad writes through the second view, then through the first, then reads the second
// again, all in one function with constant indices: the compiler may assume p[0] and p[4096]
// are different memory and answer the read from the first store.
//
//go:noinline
func storeThenLoad(p *[8192]byte) byte {
	p[4096] = 7
	p[0] = 5
	return p[4096]
}

//go:noinline
func storeByte(b []byte, i int, v byte) { b[i] = v }

//go:noinline
func loadByte(b []byte, i int) byte { return b[i] }

// Byte i and byte i+Len() of a Contiguous (adjacent) layout are the same memory, but a
// compiler cannot know that. The safe patterns are asserted here: a write and a read of the
// two aliases separated by a call that is not inlined, or done with sync/atomic. The unsafe
// one (both accesses in one function with indices the compiler can tell apart) is shown and
// logged: with the Go compiler of this writing it returns the stale value.
func TestKernelAliasing(t *testing.T) {
	ps := alloc.PageSize()
	if ps != 4096 {
		t.Skipf("the constant-index case below is written for 4 KiB pages, not %d", ps)
	}
	defer leakcheck.Check(t)()
	_, p, closePair := ringPair(t, ps)
	defer closePair()
	ring := p.Contiguous()
	n := p.Len()

	// Calls that are not inlined: the compiler must assume the callee read or wrote anything.
	for i := 0; i < n; i += 511 {
		storeByte(ring, i, byte(i))
		if got := loadByte(ring, i+n); got != byte(i) {
			t.Fatalf("wrote %d at %d, read %d at %d", byte(i), i, got, i+n)
		}
		storeByte(ring, i+n, byte(i+1))
		if got := loadByte(ring, i); got != byte(i+1) {
			t.Fatalf("wrote %d at %d, read %d at %d", byte(i+1), i+n, got, i)
		}
	}
	// sync/atomic: never reordered with other memory accesses, never cached in a register.
	lo := (*uint32)(unsafe.Pointer(&ring[64]))
	hi := (*uint32)(unsafe.Pointer(&ring[64+n]))
	atomic.StoreUint32(lo, 0xfeedface)
	if got := atomic.LoadUint32(hi); got != 0xfeedface {
		t.Fatalf("atomic store of %#x at 64, atomic load at %d: %#x", 0xfeedface, 64+n, got)
	}
	if got := atomic.AddUint32(hi, 1); got != 0xfeedfacf || atomic.LoadUint32(lo) != 0xfeedfacf {
		t.Fatalf("atomic add through the mirror: %#x, original reads %#x", got, atomic.LoadUint32(lo))
	}

	// The unsafe pattern: both aliases in one function, constant indices.
	got := storeThenLoad((*[8192]byte)(ring))
	if mem := loadByte(ring, n); mem != 5 {
		t.Fatalf("memory at %d holds %d after writing 5 at 0: the views are not aliases", n, mem)
	}
	t.Logf("storeThenLoad returned %d while the memory holds 5%s", got,
		map[bool]string{true: ": the compiler forwarded its own earlier store (the aliasing hazard)", false: ""}[got != 5])
}

// Byte i and byte i+Len() of Contiguous are the same memory, which no compiler knows: write
// one alias and read the other in different functions that are not inlined (or with
// sync/atomic), never both in one function.
func ExamplePair_Contiguous_aliasing() {
	r, err := alloc.Shared(alloc.PageSize(), alloc.WithRoom(alloc.PageSize()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := Mirror(r, Adjacent())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	ring, n := p.Contiguous(), p.Len()
	storeByte(ring, n+3, 'x')                    // through the mirror
	fmt.Println(string(rune(loadByte(ring, 3)))) // through the original: the same byte
	// Output: x
}
