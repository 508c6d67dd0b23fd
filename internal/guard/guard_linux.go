//go:build linux

package guard

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// openFDs returns the guard's own duplicate of fd (ownFD) and its stop eventfd (stopFD); on
// error it closes what it opened.
func openFDs(fd int) (own, stop int, err error) {
	if own, err = ownFD(fd); err != nil {
		return -1, -1, err
	}
	if stop, err = stopFD(); err != nil {
		closeAll(own)
		return -1, -1, err
	}
	return own, stop, nil
}

// ownFD validates fd and returns a close-on-exec duplicate of it that the guard owns, so that
// the caller closing fd (and the number being reused for another file) never changes what the
// guard watches.
func ownFD(fd int) (int, error) {
	if fd < 0 {
		return -1, fmt.Errorf("guard: fd %d: %w", fd, os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", unix.EBADF))
	}
	own, err := mem.DupCloexec(fd)
	if err != nil {
		return -1, fmt.Errorf("guard: fd %d: %w", fd, err)
	}
	return own, nil
}

// stopFD makes the eventfd that Stop writes to wake the guard.
func stopFD() (int, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("guard: %w", os.NewSyscallError("eventfd2", err))
	}
	return efd, nil
}

// wake writes 1 to the stop eventfd.
func wake(efd int) error {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	for {
		_, err := unix.Write(efd, one[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("guard: stopping: %w", os.NewSyscallError("write(eventfd)", err))
		}
		return nil
	}
}

// closeAll closes fds, reporting the first error.
func closeAll(fds ...int) error {
	var first error
	for _, fd := range fds {
		if err := unix.Close(fd); err != nil && first == nil {
			first = fmt.Errorf("guard: %w", os.NewSyscallError("close", err))
		}
	}
	return first
}
