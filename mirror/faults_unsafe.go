package mirror

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mincore reports, one byte per page of b, whether the page is resident (for shared memory:
// in the page cache, whether or not b maps it yet).
func mincore(b []byte, vec []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return os.NewSyscallError("mincore", errno)
	}
	return nil
}
