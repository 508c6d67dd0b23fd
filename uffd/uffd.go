package uffd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"golang.org/x/sys/unix"
)

// UFFD is an open userfaultfd. It owns its file descriptor; Close is idempotent, and a UFFD that
// is garbage collected without Close has its descriptor closed by the *os.File it holds (a
// safety net, not a way of life).
//
// The fd is non-blocking and parked in the Go runtime poller: a goroutine blocked in ReadMessages
// sleeps without holding an OS thread, and Close wakes it with an error that matches os.ErrClosed.
//
// Every method may be called from several goroutines at once. An ioctl that races with Close
// either completes on this userfaultfd or fails with an error matching os.ErrClosed; it never
// reaches whatever file a reused descriptor number might name later.
type UFFD struct {
	f        *os.File
	fd       int // cached f.Fd() without switching f to blocking mode
	features Feature
	ioctls   Ioctls
	userMode bool
	unpolled bool // kept out of the runtime poller (WithoutPoller)
	local    bool // made by New: its faults are this process's (see Server's WithFaultingGoroutines)

	// fmu guards f for a UFFD adopted WithoutPoller, which has no *os.File until File is
	// called (see adopt); cleanup closes its descriptor if it is dropped without Close.
	fmu     sync.Mutex
	cleanup runtime.Cleanup

	// nonblockRestored counts the times a reader found the userfaultfd made blocking by
	// someone else (poll(2) answered POLLERR) and made it non-blocking again.
	nonblockRestored atomic.Uint64

	// state counts the ioctls in flight (low bits) and has closingBit set once Close was
	// called. The descriptor is closed when the count is zero and closingBit is set, by
	// Close or by the last ioctl to finish.
	state    atomic.Int64
	closeErr error
	drained  chan struct{} // closed once the descriptor is closed
}

const closingBit = 1 << 62

// errClosed is what an ioctl on a closed UFFD returns; it matches os.ErrClosed.
var errClosed = fmt.Errorf("userfaultfd: %w", os.ErrClosed)

// Option configures New.
type Option func(*config)

type config struct {
	features     Feature
	userModeOnly bool
	kernelFaults bool
	device       deviceChoice
	unpolled     bool
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

// WithoutPoller keeps the userfaultfd out of the Go runtime's poller. In the poller, every
// message makes the runtime's network poller wake a thread, whether or not a goroutine reads
// the descriptor; that costs a wake-up per fault for a UFFD that a handler outside Go reads
// (mirror's C thread, a handler process), or that a Server reads WithDirectReads. Without the
// poller, ReadMessages waits in poll(2) on the calling thread, and a Server serves with
// direct reads whatever its options.
func WithoutPoller() Option { return func(c *config) { c.unpolled = true } }

// KernelFaults makes New fail rather than fall back to UFFD_USER_MODE_ONLY: the userfaultfd must
// also report faults the kernel takes on the process's behalf (read(2), write(2) or O_DIRECT I/O
// into registered memory). Without CAP_SYS_PTRACE that needs vm.unprivileged_userfaultfd = 1 or
// access to /dev/userfaultfd.
func KernelFaults() Option { return func(c *config) { c.kernelFaults = true } }

// ViaDevice makes New use /dev/userfaultfd (USERFAULTFD_IOC_NEW, Linux 6.1+) only. By default New
// tries userfaultfd(2) first and the device after it.
func ViaDevice() Option { return func(c *config) { c.device = deviceOnly } }

// ViaSyscall makes New use userfaultfd(2) only.
func ViaSyscall() Option { return func(c *config) { c.device = deviceNever } }

// New opens a userfaultfd with userfaultfd(2) (O_CLOEXEC|O_NONBLOCK) and completes the UFFDIO_API
// handshake, asking for the features given with WithFeatures.
//
// Without CAP_SYS_PTRACE and with vm.unprivileged_userfaultfd = 0 (the default since 5.11),
// userfaultfd(2) is refused; New then tries /dev/userfaultfd (ioctl USERFAULTFD_IOC_NEW, Linux
// 6.1+, gated by the device's permissions), and last userfaultfd(2) with UFFD_USER_MODE_ONLY
// (unless KernelFaults is given), which reports only faults raised in user mode. When every way
// is refused, the error matches unix.EPERM or os.ErrPermission and says what to change.
func New(opts ...Option) (*UFFD, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.userModeOnly && c.kernelFaults {
		return nil, errors.New("uffd: UserModeOnly and KernelFaults contradict each other: pass one")
	}
	fd, userMode, err := open(&c)
	if err != nil {
		return nil, err
	}
	// The handshake comes before the fd joins the runtime poller: until UFFDIO_API is done the
	// kernel reports EPOLLERR, which the poller would remember as "not pollable".
	u := &UFFD{fd: fd, userMode: userMode, unpolled: c.unpolled, local: true}
	if err := u.handshake(c.features); err != nil {
		unix.Close(fd)
		return nil, err
	}
	u.adopt(true)
	return u, nil
}

const permHint = "run as root or with CAP_SYS_PTRACE, set the sysctl vm.unprivileged_userfaultfd=1, " +
	"or give this user read-write access to /dev/userfaultfd (Linux 6.1+)"

// open tries, in order: userfaultfd(2); /dev/userfaultfd (unless ViaSyscall); and, only when
// both were refused for lack of privilege, userfaultfd(2) with UFFD_USER_MODE_ONLY (unless
// KernelFaults). A user-mode-only userfaultfd comes last because it reports fewer faults.
func open(c *config) (fd int, userMode bool, err error) {
	flags := unix.O_CLOEXEC | unix.O_NONBLOCK
	if c.userModeOnly {
		flags |= userModeOnly
	}
	if c.device == deviceOnly {
		fd, err := openDevice(flags)
		return fd, c.userModeOnly, err
	}
	fd, errno := sysUserfaultfd(flags)
	if errno == nil {
		return fd, c.userModeOnly, nil
	}
	sysErr := os.NewSyscallError("userfaultfd", errno)
	if errno == unix.ENOSYS {
		sysErr = fmt.Errorf("%w: userfaultfd(2) is missing (kernel built without CONFIG_USERFAULTFD): %w", ErrNotSupported, sysErr)
	}
	var devErr error
	if c.device == deviceAuto {
		fd, devErr = openDevice(flags)
		if devErr == nil {
			return fd, c.userModeOnly, nil
		}
	}
	if errno == unix.EPERM && !c.userModeOnly && !c.kernelFaults {
		// Kernel-mode faults need CAP_SYS_PTRACE unless vm.unprivileged_userfaultfd = 1.
		if fd, err := sysUserfaultfd(flags | userModeOnly); err == nil {
			return fd, true, nil
		}
	}
	switch {
	case devErr == nil && errno == unix.EPERM:
		return -1, false, fmt.Errorf("uffd: %w (%s)", sysErr, permHint)
	case devErr == nil:
		return -1, false, sysErr
	case errors.Is(sysErr, ErrNotSupported) && errors.Is(devErr, ErrNotSupported):
		return -1, false, sysErr
	}
	return -1, false, fmt.Errorf("uffd: no way in: %w; %w (%s)", sysErr, devErr, permHint)
}

// devicePath is the userfaultfd device; tests point it at a node of their own.
var devicePath = "/dev/userfaultfd"

func openDevice(flags int) (int, error) {
	dev, err := unix.Open(devicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		pe := &os.PathError{Op: "open", Path: devicePath, Err: err}
		if err == unix.ENOENT {
			return -1, fmt.Errorf("%w: %w (the device came in Linux 6.1)", ErrNotSupported, pe)
		}
		if err == unix.EACCES || err == unix.EPERM {
			return -1, fmt.Errorf("%w (give this user read-write access to the device, e.g. a group with mode 0660)", pe)
		}
		return -1, pe
	}
	defer unix.Close(dev)
	fd, err := ioctlInt(dev, ioctlDevNew, uintptr(flags))
	if err != nil {
		return -1, os.NewSyscallError("USERFAULTFD_IOC_NEW", err)
	}
	return fd, nil
}

// FromFD adopts a userfaultfd made elsewhere: by loopholelabs/userfaultfd-go's mapper.Register,
// received over a Unix socket (see ReceiveFD), inherited from a parent, or announced by a fork
// event (Msg.ForkFD). On success the UFFD owns fd and closes it on Close.
//
// The fd may be blocking or not (FromFD makes it non-blocking; O_NONBLOCK belongs to the open
// file, so other descriptors of the same userfaultfd, in this process or another, become
// non-blocking too), and its UFFDIO_API handshake may be done or not: if not, FromFD does it
// with no features; if so, the features negotiated then are read back from /proc/self/fdinfo.
// FromFD sets close-on-exec on fd, as New does: pass File to exec.Cmd.ExtraFiles to hand it
// to a child.
//
// An fd that is not a userfaultfd, or that already belongs to an open UFFD of this process, is
// refused with an error and left as it was for the caller. To serve one userfaultfd through
// two UFFDs, adopt a duplicate (F_DUPFD_CLOEXEC): each then closes its own descriptor.
//
// Of the options, FromFD takes WithoutPoller; the others are for New.
func FromFD(fd int, opts ...Option) (*UFFD, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if err := checkIsUserfaultfd(fd); err != nil {
		return nil, err
	}
	if isOwned(fd) {
		return nil, fmt.Errorf("uffd: fd %d already belongs to a UFFD of this process: use that UFFD, or adopt a duplicate (F_DUPFD_CLOEXEC)", fd)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	wasNonblock := fl&unix.O_NONBLOCK != 0
	if !wasNonblock {
		if err := unix.SetNonblock(fd, true); err != nil {
			return nil, os.NewSyscallError("fcntl", err)
		}
	}
	u := &UFFD{fd: fd, unpolled: c.unpolled}
	if err := u.adoptHandshake(); err != nil {
		if !wasNonblock {
			unix.SetNonblock(fd, false) // give the fd back as it came
		}
		return nil, err
	}
	unix.CloseOnExec(fd) // as New's descriptors: a child gets it only through exec.Cmd.ExtraFiles
	u.adopt(false)
	return u, nil
}

// owned maps the descriptor numbers of the open UFFDs of this process to them, so that FromFD
// can refuse a descriptor that already has an owner (two owners would close it twice, the
// second time perhaps closing an unrelated file that reused the number). The pointers are weak:
// a UFFD dropped without Close still has its descriptor closed by its *os.File's finalizer.
var owned sync.Map // int -> weak.Pointer[UFFD]

func isOwned(fd int) bool {
	v, ok := owned.Load(fd)
	if !ok {
		return false
	}
	o := v.(weak.Pointer[UFFD]).Value()
	return o != nil && o.state.Load()&closingBit == 0
}

// adoptHandshake learns whether the fd finished UFFDIO_API and with which features. The
// kernel marks a finished handshake with bit 31 (UFFD_FEATURE_INITIALIZED, kernel-internal) in
// the features it shows in fdinfo; kernels before that bit existed do not show it, so when the
// bit is absent a handshake is tried: it succeeds on a fresh fd and fails with EINVAL on one that
// already did it (UFFDIO_API is accepted once per userfaultfd).
func (u *UFFD) adoptHandshake() error {
	info, ok := readFdinfo(u.fd)
	if ok && info.apiDone {
		u.features = info.features
		u.ioctls = apiIoctls
		return nil
	}
	api := uffdioAPI{API: uffdAPI}
	err := u.rawIoctl(ioctlAPI, ptr(&api))
	switch {
	case err == nil:
		u.features = 0 // asked for none; api.Features lists what the kernel offers
		u.ioctls = Ioctls(api.Ioctls)
		return nil
	case err == unix.EINVAL && ok:
		u.features = info.features
		u.ioctls = apiIoctls
		return nil
	}
	return fmt.Errorf("uffd: adopting fd %d: %w", u.fd, os.NewSyscallError("UFFDIO_API", err))
}

// apiIoctls is what UFFDIO_API answers on every kernel: UFFD_API_IOCTLS.
const apiIoctls = IoctlRegister | IoctlUnregister | IoctlAPI

func checkIsUserfaultfd(fd int) error {
	if fd < 0 {
		return fmt.Errorf("uffd: fd %d is not a file descriptor", fd)
	}
	target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("uffd: fd %d is not open", fd)
		}
		return fmt.Errorf("uffd: fd %d: %w", fd, err)
	}
	if target != "anon_inode:[userfaultfd]" {
		return fmt.Errorf("uffd: fd %d is %q, not a userfaultfd", fd, target)
	}
	return nil
}

// adopt hands the (non-blocking, handshaken) fd to an *os.File, in the runtime poller unless
// WithoutPoller. os.NewFile puts every non-blocking descriptor in the poller, so a UFFD made
// WithoutPoller by New, whose open file no one else holds yet, clears O_NONBLOCK for that call.
// An adopted one (fresh false) must not: O_NONBLOCK belongs to the open file, which other
// processes may be polling at that very moment (a handler process and its standby adopt the
// same userfaultfd), and poll(2) on a blocking userfaultfd answers POLLERR. It gets no
// *os.File until File is called, and a cleanup closes its descriptor if it is dropped.
func (u *UFFD) adopt(fresh bool) {
	switch {
	case !u.unpolled:
		u.f = os.NewFile(uintptr(u.fd), "userfaultfd")
	case fresh:
		unix.SetNonblock(u.fd, false)
		u.f = os.NewFile(uintptr(u.fd), "userfaultfd")
		unix.SetNonblock(u.fd, true)
	default:
		u.cleanup = runtime.AddCleanup(u, func(fd int) { unix.Close(fd) }, u.fd)
	}
	u.drained = make(chan struct{})
	owned.Store(u.fd, weak.Make(u))
}

func (u *UFFD) handshake(want Feature) error {
	api := uffdioAPI{API: uffdAPI, Features: uint64(want)}
	if err := u.rawIoctl(ioctlAPI, ptr(&api)); err != nil {
		if err == unix.EPERM && want&FeatureEventFork != 0 {
			return fmt.Errorf("uffd: UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE: %w", os.NewSyscallError("UFFDIO_API", err))
		}
		if err == unix.EINVAL && want != 0 {
			// Ask again with nothing to learn what the kernel offers: a UFFDIO_API refused
			// for unknown features leaves the fd fresh.
			probe := uffdioAPI{API: uffdAPI}
			if u.rawIoctl(ioctlAPI, ptr(&probe)) == nil {
				return newFeatureError(want &^ Feature(probe.Features))
			}
			if avail, perr := Available(); perr == nil && want&^avail != 0 {
				return newFeatureError(want &^ avail)
			}
		}
		return os.NewSyscallError("UFFDIO_API", err)
	}
	// The kernel answers with every feature it offers; the userfaultfd has those asked for.
	if missing := want &^ Feature(api.Features); missing != 0 {
		return newFeatureError(missing)
	}
	// The kernel may enable more than was asked (WP_UNPOPULATED with WP_ASYNC): report what
	// it enabled, as FromFD would read it back.
	u.features = enabledWith(want)
	if info, ok := readFdinfo(u.fd); ok && info.apiDone {
		u.features = info.features
	}
	u.ioctls = Ioctls(api.Ioctls)
	return nil
}

// enabledWith returns the features the kernel enables when asked for want (fs/userfaultfd.c,
// userfaultfd_api): WP_ASYNC relies on WP_UNPOPULATED, which comes with it.
func enabledWith(want Feature) Feature {
	if want&FeatureWPAsync != 0 {
		want |= FeatureWPUnpopulated
	}
	return want
}

// Fd returns the file descriptor. It stays owned by u and is invalid after Close.
func (u *UFFD) Fd() int { return u.fd }

// File returns the *os.File that owns the descriptor, for passing it to a child process
// (exec.Cmd.ExtraFiles) or to APIs that take files. It stays owned by u: do not close it, and
// do not read from it while ReadMessages may run. Its Fd method returns the same number as
// UFFD.Fd and leaves the descriptor non-blocking: os switches a descriptor back to blocking
// mode only if os itself made it non-blocking, and this one was non-blocking already when the
// *os.File was made. For a UFFD adopted with FromFD and WithoutPoller, the first call makes
// the *os.File, which puts the descriptor in the runtime poller (reads still wait in poll(2)).
func (u *UFFD) File() *os.File {
	u.fmu.Lock()
	defer u.fmu.Unlock()
	if u.f == nil && u.state.Load()&closingBit == 0 {
		u.cleanup.Stop()
		u.f = os.NewFile(uintptr(u.fd), "userfaultfd")
	}
	return u.f
}

// setReadDeadline sets the read deadline of the *os.File of a UFFD in the runtime poller; it
// is how a Server interrupts a read parked there. A UFFD outside the poller has none to set.
func (u *UFFD) setReadDeadline(t time.Time) error {
	if u.unpolled {
		return nil
	}
	return u.f.SetReadDeadline(t)
}

// Features returns the features enabled on the userfaultfd by its UFFDIO_API handshake: those
// asked for, plus any the kernel turned on with them (WP_ASYNC brings WP_UNPOPULATED). It is
// the same for a UFFD from New and for one adopted with FromFD. Available and Probe tell what
// the kernel offers.
func (u *UFFD) Features() Feature { return u.features }

// Ioctls returns the ioctls the userfaultfd itself accepts (UFFDIO_API's answer).
func (u *UFFD) Ioctls() Ioctls { return u.ioctls }

// IsUserModeOnly reports whether the userfaultfd was made with UFFD_USER_MODE_ONLY (by request
// or because the process lacked the privilege for more): faults the kernel takes on the
// process's behalf, such as read(2) into registered memory, then fail with EFAULT. For a UFFD
// adopted with FromFD it reports false, as the flag cannot be read back.
func (u *UFFD) IsUserModeOnly() bool { return u.userMode }

// Close closes the userfaultfd (close(2)). The kernel unregisters every range and wakes every
// blocked thread; later faults are served as ordinary faults (zero pages). A blocked
// ReadMessages returns an error matching os.ErrClosed. A second Close returns nil.
//
// An ioctl running in another goroutine when Close is called finishes first; Close waits for
// it, so the descriptor is closed when Close returns.
func (u *UFFD) Close() error {
	old := u.state.Or(closingBit)
	if old&closingBit != 0 {
		return nil
	}
	if old == 0 {
		u.finalClose()
	} else {
		<-u.drained // the last ioctl in flight closes the descriptor
	}
	return u.closeErr
}

func (u *UFFD) finalClose() {
	// Forget the number before it is closed: once closed, it may name another userfaultfd.
	if v, ok := owned.Load(u.fd); ok && v.(weak.Pointer[UFFD]).Value() == u {
		owned.CompareAndDelete(u.fd, v)
	}
	u.fmu.Lock()
	if u.f != nil {
		u.closeErr = u.f.Close()
	} else {
		u.cleanup.Stop()
		u.closeErr = unix.Close(u.fd)
	}
	u.fmu.Unlock()
	if u.drained != nil {
		close(u.drained)
	}
}

// acquire takes a reference for one ioctl; false means u is closing.
func (u *UFFD) acquire() bool {
	for {
		n := u.state.Load()
		if n&closingBit != 0 {
			return false
		}
		if u.state.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (u *UFFD) release() {
	if u.state.Add(-1) == closingBit {
		u.finalClose()
	}
}

// Available returns every feature the running kernel offers, probing once with a new
// userfaultfd. It needs the same privilege as New. Probe tells more.
func Available() (Feature, error) {
	availOnce.Do(func() {
		var c config
		fd, _, err := open(&c)
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
