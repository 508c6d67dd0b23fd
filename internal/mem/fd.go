package mem

import (
	"os"

	"golang.org/x/sys/unix"
)

// DupCloexec returns a close-on-exec duplicate of fd (fcntl(2) F_DUPFD_CLOEXEC), retried on EINTR.
func DupCloexec(fd int) (int, error) {
	for {
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", err)
		}
		return nfd, nil
	}
}
