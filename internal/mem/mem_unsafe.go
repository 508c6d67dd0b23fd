// Package mem holds the raw memory system calls (mmap, mremap, munmap, madvise, mprotect,
// mincore, memfd_create) that the packages of this module share, one small typed function per call. Errors wrap the errno
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
//
// A duplicate (oldSize 0) with MREMAP_FIXED never destroys what is at newAddr when the kernel
// refuses it. Kernels before 6.17 unmapped the destination before checking the source, so a
// refused duplicate left a hole in the caller's reservation that another thread's mmap could
// take; there, Mremap duplicates to an address of the kernel's choosing first (every refusal of
// a duplicate happens in that step, with newAddr untouched) and then moves the new mapping onto
// newAddr (mremap with old size = new size and MREMAP_FIXED), one system call more. If even
// that move fails (only when the kernel runs out of memory or the process out of mappings, as
// the move of an existing shared mapping of the same size passes every other check), the range
// is reserved again at once, without replacing anything, to close the hole.
func Mremap(old unsafe.Pointer, oldSize, newSize uintptr, flags int, newAddr unsafe.Pointer) (unsafe.Pointer, error) {
	if oldSize == 0 && flags == unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED && !fixedValidatesFirst {
		return duplicateThenMove(old, newSize, newAddr)
	}
	p, err := unix.MremapPtr(old, oldSize, newAddr, newSize, flags)
	if err != nil {
		return nil, os.NewSyscallError("mremap", err)
	}
	return p, nil
}

func duplicateThenMove(old unsafe.Pointer, n uintptr, dst unsafe.Pointer) (unsafe.Pointer, error) {
	tmp, err := unix.MremapPtr(old, 0, nil, n, unix.MREMAP_MAYMOVE)
	if err != nil {
		return nil, os.NewSyscallError("mremap", err)
	}
	p, err := unix.MremapPtr(tmp, n, dst, n, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED)
	if err != nil {
		unix.MunmapPtr(tmp, n)
		ReserveAt(dst, n)
		return nil, os.NewSyscallError("mremap", err)
	}
	return p, nil
}

// fixedValidatesFirst reports whether the running kernel (6.17+) checks a MREMAP_FIXED
// request before unmapping its destination.
var fixedValidatesFirst = KernelAtLeast(6, 17)

// Madvise wraps madvise(2).
func Madvise(addr unsafe.Pointer, length uintptr, advice int) error {
	_, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(addr), length, uintptr(advice))
	if e != 0 {
		return os.NewSyscallError("madvise", e)
	}
	return nil
}

// Mprotect wraps mprotect(2).
func Mprotect(addr unsafe.Pointer, length uintptr, prot int) error {
	_, _, e := unix.Syscall(unix.SYS_MPROTECT, uintptr(addr), length, uintptr(prot))
	if e != 0 {
		return os.NewSyscallError("mprotect", e)
	}
	return nil
}

// Mincore wraps mincore(2): vec gets one byte per page of [addr, addr+length), whose low bit
// says whether the page is resident (for shared memory: in the page cache, whether or not
// this range maps it yet).
func Mincore(addr unsafe.Pointer, length uintptr, vec []byte) error {
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(addr), length, uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if e != 0 {
		return os.NewSyscallError("mincore", e)
	}
	return nil
}

// MemfdCreate wraps memfd_create(2).
func MemfdCreate(name string, flags int) (int, error) {
	fd, err := unix.MemfdCreate(name, flags)
	if err != nil {
		return -1, os.NewSyscallError("memfd_create", err)
	}
	return fd, nil
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
