package main

import "unsafe"

// bytesAt is the memory of a mapping this package made at addr, as a slice.
func bytesAt(addr uintptr, n int) []byte {
	// Through a pointer to the address, so vet does not take the mapping for Go memory.
	return unsafe.Slice(*(**byte)(unsafe.Pointer(&addr)), n)
}

// addrOf is the address of the first byte of b (a mapping, never Go heap memory).
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
