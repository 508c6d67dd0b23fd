package ring

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

func init() {
	// The header is shared between processes built from possibly different binaries of this
	// package: its layout must not depend on the compiler's choices.
	if unsafe.Sizeof(header{}) != headerSize || unsafe.Offsetof(header{}.head) != lineSize ||
		unsafe.Offsetof(header{}.tail) != 2*lineSize {
		panic("ring: header layout changed")
	}
}

// headerAt views the start of b as a header. b must be at least headerSize bytes, aligned to
// lineSize, and must outlive every use of the result (the caller keeps b, or its mapping).
func headerAt(b []byte) (*header, error) {
	if len(b) < headerSize {
		return nil, fmt.Errorf("ring: header needs %d bytes, have %d", headerSize, len(b))
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	if uintptr(p)%lineSize != 0 {
		return nil, fmt.Errorf("ring: header at %p is not aligned to %d bytes", p, lineSize)
	}
	return (*header)(p), nil
}

// newLocalHeader returns a zeroed header on the Go heap, aligned to a cache line, for a ring
// used inside one process. The returned slice keeps the memory alive.
func newLocalHeader() (*header, []byte) {
	buf := make([]byte, headerSize+lineSize)
	off := (lineSize - uintptr(unsafe.Pointer(unsafe.SliceData(buf)))%lineSize) % lineSize
	h, err := headerAt(buf[off:])
	if err != nil {
		panic(err) // cannot happen: aligned above
	}
	return h, buf
}

// plainStore stores v in a with an ordinary store, without the fence of a.Store: only for
// Ring.cheapPublish, whose readers are fenced by membarrier instead.
func plainStore(a *atomic.Uint64, v uint64) { *(*uint64)(unsafe.Pointer(a)) = v }
