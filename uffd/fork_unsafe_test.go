package uffd

import (
	"syscall"
	"unsafe"
)

// rawForkTouchExit forks with fork(2); the child reads the byte at a (a registered page, so it
// blocks until the parent serves the fault through the fork event's userfaultfd) and exits
// with that byte as its status. It returns the child's pid, or -errno. The child runs no Go
// runtime code: only raw system calls and one load.
//
//go:norace
//go:nosplit
func rawForkTouchExit(a uintptr) int {
	pid, _, errno := syscall.RawSyscall(syscall.SYS_FORK, 0, 0, 0)
	if errno != 0 {
		return -int(errno)
	}
	if pid == 0 {
		v := *(*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&a)))
		syscall.RawSyscall(syscall.SYS_EXIT_GROUP, uintptr(v), 0, 0)
	}
	return int(pid)
}
