package uffd

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// UFFD is an open userfaultfd. It owns its file descriptor; Close is idempotent and a cleanup
// closes a forgotten UFFD when it is garbage collected (a safety net, not a way of life).
//
// The fd is non-blocking and parked in the Go runtime poller: a goroutine blocked in ReadMessages
// sleeps without holding an OS thread, and Close wakes it with an error that matches os.ErrClosed.
type UFFD struct {
	f        *os.File
	fd       int // cached f.Fd() without switching f to blocking mode
	features Feature
	ioctls   Ioctls

	closeOnce sync.Once
	closeErr  error
}

// Option configures New.
type Option func(*config)

type config struct {
	features     Feature
	userModeOnly bool
	device       deviceChoice
}

type deviceChoice int

const (
	deviceAuto deviceChoice = iota // syscall, then /dev/userfaultfd
	deviceNever
	deviceOnly
)

// WithFeatures asks for features in the UFFDIO_API handshake. If the kernel lacks any of them, New
// fails with an error matching ErrNotSupported that names each one and the kernel that brought it.
func WithFeatures(f Feature) Option { return func(c *config) { c.features |= f } }

// UserModeOnly passes UFFD_USER_MODE_ONLY: only faults raised in user mode are reported; a fault
// the kernel takes on the process's behalf (read(2) into registered memory) fails with EFAULT.
// New sets it by itself when the process lacks the privilege for kernel-mode faults.
func UserModeOnly() Option { return func(c *config) { c.userModeOnly = true } }

// ViaDevice makes New use /dev/userfaultfd (USERFAULTFD_IOC_NEW, Linux 6.1+) only. By default New
// tries userfaultfd(2) first and the device after it.
func ViaDevice() Option { return func(c *config) { c.device = deviceOnly } }

// ViaSyscall makes New use userfaultfd(2) only.
func ViaSyscall() Option { return func(c *config) { c.device = deviceNever } }

// New opens a userfaultfd (O_CLOEXEC|O_NONBLOCK) and completes the UFFDIO_API handshake.
//
// Without CAP_SYS_PTRACE and with vm.unprivileged_userfaultfd = 0, userfaultfd(2) only works with
// UFFD_USER_MODE_ONLY; New retries that way by itself, then tries /dev/userfaultfd. When every way
// is refused the error says what to change.
func New(opts ...Option) (*UFFD, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	fd, err := open(&c)
	if err != nil {
		return nil, err
	}
	// The handshake comes before the fd joins the runtime poller: until UFFDIO_API is done the
	// kernel reports EPOLLERR, which the poller would remember as "not pollable".
	u := &UFFD{fd: fd}
	if err := u.handshake(c.features); err != nil {
		unix.Close(fd)
		return nil, err
	}
	u.adopt()
	return u, nil
}

func open(c *config) (int, error) {
	flags := unix.O_CLOEXEC | unix.O_NONBLOCK
	if c.userModeOnly {
		flags |= userModeOnly
	}
	var sysErr, devErr error
	if c.device != deviceOnly {
		fd, err := sysUserfaultfd(flags)
		if err == nil {
			return fd, nil
		}
		if err == unix.EPERM && !c.userModeOnly {
			// Kernel-mode faults need CAP_SYS_PTRACE unless vm.unprivileged_userfaultfd = 1.
			if fd, err2 := sysUserfaultfd(flags | userModeOnly); err2 == nil {
				return fd, nil
			}
		}
		sysErr = os.NewSyscallError("userfaultfd", err)
		if err == unix.ENOSYS {
			return -1, fmt.Errorf("%w: userfaultfd(2) is missing (kernel built without CONFIG_USERFAULTFD): %v", ErrNotSupported, sysErr)
		}
	}
	if c.device != deviceNever {
		fd, err := openDevice(flags)
		if err == nil {
			return fd, nil
		}
		devErr = err
	}
	switch {
	case devErr == nil:
		return -1, fmt.Errorf("%w (run as root or with CAP_SYS_PTRACE, set vm.unprivileged_userfaultfd=1, or allow /dev/userfaultfd with ViaDevice)", sysErr)
	case sysErr == nil:
		return -1, devErr
	default:
		return -1, fmt.Errorf("userfaultfd refused: %v; %v (run as root or with CAP_SYS_PTRACE, set vm.unprivileged_userfaultfd=1 or pass UserModeOnly, or give this user read-write access to /dev/userfaultfd)", sysErr, devErr)
	}
}

func openDevice(flags int) (int, error) {
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("%w: /dev/userfaultfd does not exist (Linux 6.1+)", ErrNotSupported)
		}
		return -1, fmt.Errorf("open /dev/userfaultfd: %w (give this user read-write access to the device)", err)
	}
	defer unix.Close(dev)
	fd, err := ioctlInt(dev, ioctlDevNew, uintptr(flags))
	if err != nil {
		return -1, os.NewSyscallError("USERFAULTFD_IOC_NEW", err)
	}
	return fd, nil
}

// FromFD adopts a userfaultfd made elsewhere: by loopholelabs/userfaultfd-go's mapper.Register,
// received over a Unix socket, inherited. The UFFD takes ownership of fd and closes it on Close.
// The fd is switched to non-blocking mode. If the UFFDIO_API handshake was not done yet, FromFD
// does it with no features; otherwise the negotiated features are read back through the kernel's
// /proc/self/fdinfo. An fd that is not a userfaultfd is refused and left open for the caller.
func FromFD(fd int) (*UFFD, error) {
	if err := checkIsUserfaultfd(fd); err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	u := &UFFD{fd: fd}
	if info, ok := readFdinfo(fd); ok && info.apiDone {
		u.features = info.features
		u.ioctls = IoctlRegister | IoctlUnregister | IoctlAPI
	} else if err := u.handshake(0); err != nil {
		return nil, err // the fd stays the caller's
	}
	u.adopt()
	return u, nil
}

func checkIsUserfaultfd(fd int) error {
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return fmt.Errorf("uffd: fd %d: %w", fd, err)
	}
	if target != "anon_inode:[userfaultfd]" {
		return fmt.Errorf("uffd: fd %d is %q, not a userfaultfd", fd, target)
	}
	return nil
}

// adopt hands the (non-blocking, handshaken) fd to an *os.File in the runtime poller.
func (u *UFFD) adopt() {
	u.f = os.NewFile(uintptr(u.fd), "userfaultfd")
}

func (u *UFFD) handshake(want Feature) error {
	api := uffdioAPI{API: uffdAPI, Features: uint64(want)}
	if err := u.ioctl(ioctlAPI, ptr(&api)); err != nil {
		if err == unix.EINVAL && want != 0 {
			// Ask again with nothing to learn what the kernel offers (a failed UFFDIO_API
			// leaves the fd usable again since 5.19; older kernels need a new fd).
			probe := uffdioAPI{API: uffdAPI}
			if u.ioctl(ioctlAPI, ptr(&probe)) == nil {
				return &FeatureError{Missing: want &^ Feature(probe.Features)}
			}
			if avail, perr := Available(); perr == nil && want&^avail != 0 {
				return &FeatureError{Missing: want &^ avail}
			}
		}
		return os.NewSyscallError("UFFDIO_API", err)
	}
	if missing := want &^ Feature(api.Features); missing != 0 {
		return &FeatureError{Missing: missing}
	}
	u.features = Feature(api.Features)
	u.ioctls = Ioctls(api.Ioctls)
	return nil
}

// Fd returns the file descriptor. It stays owned by u.
func (u *UFFD) Fd() int { return u.fd }

// File returns the *os.File that owns the descriptor, for passing it to a child process
// (exec.Cmd.ExtraFiles) or over a Unix socket. It stays owned by u.
func (u *UFFD) File() *os.File { return u.f }

// Features returns the features negotiated in the UFFDIO_API handshake.
func (u *UFFD) Features() Feature { return u.features }

// Ioctls returns the ioctls the userfaultfd itself accepts (UFFDIO_API's answer).
func (u *UFFD) Ioctls() Ioctls { return u.ioctls }

// Close closes the userfaultfd. The kernel unregisters every range and wakes every blocked
// thread; later faults are served as ordinary faults (zero pages). A second Close returns nil.
func (u *UFFD) Close() error {
	u.closeOnce.Do(func() {
		if u.f != nil {
			u.closeErr = u.f.Close()
		}
	})
	return u.closeErr
}

// Available returns every feature the running kernel offers, probing once with a new
// userfaultfd. It needs the same privilege as New.
func Available() (Feature, error) {
	availOnce.Do(func() {
		var c config
		fd, err := open(&c)
		if err != nil {
			availErr = err
			return
		}
		defer unix.Close(fd)
		api := uffdioAPI{API: uffdAPI}
		if err := ioctlPtr(fd, ioctlAPI, ptr(&api)); err != nil {
			availErr = os.NewSyscallError("UFFDIO_API", err)
			return
		}
		avail = Feature(api.Features)
	})
	return avail, availErr
}

var (
	availOnce sync.Once
	avail     Feature
	availErr  error
)
