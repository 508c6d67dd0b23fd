package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Adjacent rings made with raw system calls from Go, the way a user without the library would.

func sysMmap(addr uintptr, n int, prot, flags, fd int) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_MMAP, addr, uintptr(n), uintptr(prot), uintptr(flags), uintptr(fd), 0)
	if e != 0 {
		return 0, e
	}
	return r, nil
}

func sysMunmap(addr uintptr, n int) error {
	if _, _, e := unix.Syscall(unix.SYS_MUNMAP, addr, uintptr(n), 0); e != 0 {
		return e
	}
	return nil
}

func reserve(n int) (uintptr, error) {
	return sysMmap(0, 2*n, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE, -1)
}

// checkRing writes the last byte of the first half and reads it through the second.
func checkRing(res uintptr, n int) error {
	a := bytesAt(res, 2*n)
	a[n-1] = 42
	if a[2*n-1] != 42 {
		return fmt.Errorf("ring of %d bytes: the second half does not show the first", n)
	}
	return nil
}

// unmapRing unmaps the ring at res, checked first with checkRing if check is set.
func unmapRing(res uintptr, n int, check bool) error {
	if check {
		if err := checkRing(res, n); err != nil {
			sysMunmap(res, 2*n)
			return err
		}
	}
	return sysMunmap(res, 2*n)
}

// ringDupGo creates and destroys iters adjacent rings with the mremap duplicate, inline.
func ringDupGo(n, iters int) (time.Duration, error) {
	t0 := time.Now()
	for i := range iters {
		res, err := reserve(n)
		if err != nil {
			return 0, fmt.Errorf("reserve: %w", err)
		}
		if _, err := sysMmap(res, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED, -1); err != nil {
			sysMunmap(res, 2*n)
			return 0, fmt.Errorf("mmap over the reservation: %w", err)
		}
		if _, _, e := unix.Syscall6(unix.SYS_MREMAP, res, 0, uintptr(n), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, res+uintptr(n), 0); e != 0 {
			sysMunmap(res, 2*n)
			return 0, fmt.Errorf("mremap duplicate: %w", e)
		}
		if err := unmapRing(res, n, i == 0); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

// ringFileGo creates and destroys iters adjacent rings by mapping a file twice: open makes a
// fresh, already unlinked file (shm_open's /dev/shm or a temporary file).
func ringFileGo(n, iters int, open func() (*os.File, error)) (time.Duration, error) {
	t0 := time.Now()
	for i := range iters {
		f, err := open()
		if err != nil {
			return 0, err
		}
		if err := f.Truncate(int64(n)); err != nil {
			f.Close()
			return 0, err
		}
		res, err := reserve(n)
		if err != nil {
			f.Close()
			return 0, fmt.Errorf("reserve: %w", err)
		}
		fd := int(f.Fd())
		_, err1 := sysMmap(res, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED, fd)
		_, err2 := sysMmap(res+uintptr(n), n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED, fd)
		f.Close()
		if err1 != nil || err2 != nil {
			sysMunmap(res, 2*n)
			return 0, fmt.Errorf("mmap file twice: %v, %v", err1, err2)
		}
		if err := unmapRing(res, n, i == 0); err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}
