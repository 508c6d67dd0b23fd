package uffd

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// RangeError reports a range the caller passed that cannot be used, before any system call.
type RangeError struct {
	// Op is the ioctl the range was meant for ("UFFDIO_REGISTER", "UFFDIO_COPY", ...).
	Op string
	// Addr and Len are the range as passed.
	Addr uintptr
	Len  int
	// Why says what is wrong with it and what to pass instead.
	Why string
}

// Error says which call, which range and what is wrong with it.
func (e *RangeError) Error() string {
	return fmt.Sprintf("%s [%#x, +%d): %s", e.Op, e.Addr, e.Len, e.Why)
}

var pageSize = os.Getpagesize()

// checkRange refuses what the kernel would refuse with a bare EINVAL: a range that is empty or
// not page aligned.
func checkRange(op string, addr uintptr, length int) error {
	switch {
	case length <= 0:
		return &RangeError{Op: op, Addr: addr, Len: length, Why: "length must be positive"}
	case addr%uintptr(pageSize) != 0 || length%pageSize != 0:
		return &RangeError{Op: op, Addr: addr, Len: length,
			Why: fmt.Sprintf("address and length must be multiples of the page size (%d)", pageSize)}
	case addr+uintptr(length) < addr:
		return &RangeError{Op: op, Addr: addr, Len: length, Why: "range wraps around the address space"}
	}
	return nil
}

// registerError explains the errno of a refused UFFDIO_REGISTER.
func registerError(u *UFFD, addr uintptr, length int, mode Mode, err error) error {
	if err == errClosed {
		return err
	}
	se := os.NewSyscallError("UFFDIO_REGISTER", err)
	var why string
	switch err {
	case unix.EINVAL:
		why = "the range must be private anonymous, shmem (MAP_SHARED|MAP_ANONYMOUS, memfd, tmpfs) or hugetlb memory " +
			"(a MAP_SHARED regular file cannot be registered)"
		if mode&ModeMinor != 0 {
			why += "; ModeMinor needs shmem (Linux 5.14+) or hugetlb (5.13+), never private anonymous memory"
		}
		if mode&ModeWP != 0 {
			why += "; ModeWP on shmem or hugetlb needs Linux 5.19+"
		}
	case unix.ENOMEM:
		why = "no mapping covers the range"
	case unix.EPERM:
		why = "the mapping cannot be written (a shmem object opened read-only, or PROT_WRITE forbidden)"
	case unix.EBUSY:
		why = "part of the range is registered with another userfaultfd"
	default:
		return fmt.Errorf("[%#x, +%d) mode %v: %w", addr, length, mode, se)
	}
	return fmt.Errorf("[%#x, +%d) mode %v: %w: %s", addr, length, mode, se, why)
}
