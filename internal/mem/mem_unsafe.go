// Package mem holds the raw memory system calls (mmap, mremap, munmap, madvise, memfd) that
// packages alloc and mirror share, one small typed function per call. Errors wrap the errno
// with the name of the call (os.NewSyscallError), so errors.Is(err, unix.EINVAL) works.
//
// Addresses travel as unsafe.Pointer, never as a uintptr that is converted back, so the
// pointer rules of package unsafe hold everywhere.
package mem

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

var pageSize = os.Getpagesize()

// Pointer is an address of mapped memory. It is unsafe.Pointer, named here so that the packages
// built on this one need not import unsafe.
type Pointer = unsafe.Pointer

// PageSize is the size of a base page of the running kernel.
func PageSize() int { return pageSize }

// Mmap wraps mmap(2).
func Mmap(addr unsafe.Pointer, length uintptr, prot, flags, fd int, off int64) (unsafe.Pointer, error) {
	p, err := unix.MmapPtr(fd, off, addr, length, prot, flags)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	return p, nil
}

// Munmap wraps munmap(2).
func Munmap(addr unsafe.Pointer, length uintptr) error {
	if err := unix.MunmapPtr(addr, length); err != nil {
		return os.NewSyscallError("munmap", err)
	}
	return nil
}

// Mremap wraps mremap(2). newAddr is used only with unix.MREMAP_FIXED.
func Mremap(old unsafe.Pointer, oldSize, newSize uintptr, flags int, newAddr unsafe.Pointer) (unsafe.Pointer, error) {
	p, err := unix.MremapPtr(old, oldSize, newAddr, newSize, flags)
	if err != nil {
		return nil, os.NewSyscallError("mremap", err)
	}
	return p, nil
}

// Madvise wraps madvise(2).
func Madvise(addr unsafe.Pointer, length uintptr, advice int) error {
	_, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(addr), length, uintptr(advice))
	if e != 0 {
		return os.NewSyscallError("madvise", e)
	}
	return nil
}

// Reserve maps length bytes of inaccessible address space (PROT_NONE, private, no swap
// reservation) anywhere.
func Reserve(length uintptr) (unsafe.Pointer, error) {
	return Mmap(nil, length, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE, -1, 0)
}

// ReserveOver replaces [addr, addr+length), which the caller owns, with inaccessible address
// space, atomically (MAP_FIXED), so the range never becomes free for another mapping.
func ReserveOver(addr unsafe.Pointer, length uintptr) error {
	_, err := Mmap(addr, length, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED, -1, 0)
	return err
}

// ReserveAt reserves exactly [addr, addr+length) if that range is free, and reports false
// (with no error and nothing mapped) if any part of it is in use. It never replaces a
// mapping: MAP_FIXED_NOREPLACE (4.17+); on older kernels, which treat the flag as a hint,
// a reservation placed elsewhere is undone.
func ReserveAt(addr unsafe.Pointer, length uintptr) (bool, error) {
	p, err := Mmap(addr, length, unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED_NOREPLACE, -1, 0)
	if err != nil {
		if isErrno(err, unix.EEXIST) {
			return false, nil
		}
		return false, err
	}
	if p != addr {
		return false, Munmap(p, length)
	}
	return true, nil
}

func isErrno(err error, want unix.Errno) bool {
	se, ok := err.(*os.SyscallError)
	return ok && se.Err == want
}

// Slice returns the n bytes at p as a slice.
func Slice(p unsafe.Pointer, n int) []byte { return unsafe.Slice((*byte)(p), n) }

// Ptr returns the address of b's first byte, or nil for an empty slice.
func Ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(unsafe.SliceData(b))
}

// Add returns p+off.
func Add(p unsafe.Pointer, off uintptr) unsafe.Pointer { return unsafe.Add(p, off) }

// Addr returns p as an integer, for messages and comparisons.
func Addr(p unsafe.Pointer) uintptr { return uintptr(p) }
