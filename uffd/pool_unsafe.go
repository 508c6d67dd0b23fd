package uffd

import (
	"os"
	"unsafe"
)

// alignedBuf returns n bytes starting on a page boundary: the kernel copies whole pages from it,
// and an aligned source keeps each page copy within one source page.
func alignedBuf(n int) []byte {
	ps := os.Getpagesize()
	raw := make([]byte, n+ps)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&raw[0])) & uintptr(ps-1)); r != 0 {
		off = ps - r
	}
	return raw[off : off+n : off+n]
}

// bufAddr is the address of b[i], for the resolving ioctls.
func bufAddr(b []byte, i int) unsafe.Pointer { return unsafe.Pointer(&b[i]) }
