package uffd

import (
	"errors"
	"fmt"
	"github.com/mirrormem/mirrormem/internal/mem"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Report is what the running kernel offers, found by trying it: a UFFDIO_API handshake, then
// UFFDIO_REGISTER of a page of private anonymous memory and of a page of shmem with every mode
// the kernel takes there.
type Report struct {
	// Kernel is the running kernel's release (uname -r).
	Kernel string
	// Features is every feature UFFDIO_API offers.
	Features Feature
	// Ioctls is what the userfaultfd itself accepts (UFFDIO_API's answer).
	Ioctls Ioctls
	// AnonModes and AnonIoctls: the modes a private anonymous range took, and the ioctls the
	// kernel declared usable on it.
	AnonModes  Mode
	AnonIoctls Ioctls
	// ShmemModes and ShmemIoctls: the same for shmem (MAP_SHARED|MAP_ANONYMOUS), with UFFDIO_MOVE
	// removed as Register does (the kernel declares it, but it only works on private memory).
	ShmemModes  Mode
	ShmemIoctls Ioctls
	// Device reports whether /dev/userfaultfd exists (Linux 6.1+).
	Device bool
	// UserModeOnly reports that this process only gets user-mode-only userfaultfds (it lacks
	// CAP_SYS_PTRACE and vm.unprivileged_userfaultfd is 0).
	UserModeOnly bool
}

// Require returns nil if the kernel offers every feature in f, else a *FeatureError (matching
// ErrNotSupported) naming each missing feature and the Linux version that brought it.
func (r *Report) Require(f Feature) error {
	if missing := f &^ r.Features; missing != 0 {
		return &FeatureError{Missing: missing, Kernel: r.Kernel}
	}
	return nil
}

// RequireIoctls returns nil if the ioctls in s are usable on memory of the given kind (shmem
// true: shmem, false: private anonymous), else an *IoctlError matching ErrNotSupported.
func (r *Report) RequireIoctls(s Ioctls, shmem bool) error {
	have, kind := r.AnonIoctls, "private anonymous memory"
	if shmem {
		have, kind = r.ShmemIoctls, "shmem"
	}
	if missing := s &^ have; missing != 0 {
		return &IoctlError{Missing: missing, Memory: kind, Kernel: r.Kernel}
	}
	return nil
}

// String lists everything by name, one kind per line.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kernel %s\n", r.Kernel)
	fmt.Fprintf(&b, "features %#x: %v\n", uint64(r.Features), r.Features)
	fmt.Fprintf(&b, "userfaultfd ioctls: %v\n", r.Ioctls)
	fmt.Fprintf(&b, "private anonymous: modes %v, ioctls %v\n", r.AnonModes, r.AnonIoctls)
	fmt.Fprintf(&b, "shmem: modes %v, ioctls %v\n", r.ShmemModes, r.ShmemIoctls)
	fmt.Fprintf(&b, "/dev/userfaultfd: %v, user-mode only: %v", r.Device, r.UserModeOnly)
	return b.String()
}

// IoctlError says which ioctls the kernel does not offer on a kind of memory. It matches
// ErrNotSupported.
type IoctlError struct {
	// Missing holds the ioctls needed that the kernel does not offer on the memory.
	Missing Ioctls
	// Memory names the kind of memory asked about ("private anonymous", "shmem", ...).
	Memory string
	// Kernel is the running kernel's release (uname -r), for the message.
	Kernel string
}

// Error names each missing ioctl, the Linux version that brought it and the memory type.
func (e *IoctlError) Error() string {
	var parts []string
	for f := e.Missing; f != 0; f &= f - 1 {
		one := f & -f
		if since := one.Since(); since != "" {
			parts = append(parts, fmt.Sprintf("UFFDIO_%v (Linux %s+)", one, since))
		} else {
			parts = append(parts, "UFFDIO_"+one.String())
		}
	}
	return fmt.Sprintf("userfaultfd: kernel %s does not offer %s on %s", e.Kernel, strings.Join(parts, ", "), e.Memory)
}

// Is makes errors.Is(err, ErrNotSupported) true.
func (e *IoctlError) Is(target error) bool { return target == ErrNotSupported }

var ioctlSince = map[Ioctls]string{
	IoctlAPI: "4.3", IoctlRegister: "4.3", IoctlUnregister: "4.3", IoctlWake: "4.3", IoctlCopy: "4.3",
	IoctlZeropage: "4.3", IoctlWriteprotect: "5.7", IoctlContinue: "5.13", IoctlPoison: "6.6", IoctlMove: "6.8",
}

// Since returns the first Linux version offering the lowest ioctl in s ("" if unknown). Shmem
// gained them later: COPY and ZEROPAGE 4.11, WRITEPROTECT 5.19, CONTINUE 5.14.
func (s Ioctls) Since() string {
	if s == 0 {
		return ""
	}
	return ioctlSince[s&-s]
}

// Probe finds what the running kernel offers (see Report). It runs once per process; later
// calls return the same answer. It needs the same privilege as New, and leaves nothing behind.
func Probe() (*Report, error) {
	probeOnce.Do(func() { probeReport, probeErr = probe() })
	if probeErr != nil {
		return nil, probeErr
	}
	r := *probeReport
	return &r, nil
}

var (
	probeOnce   sync.Once
	probeReport *Report
	probeErr    error
)

func probe() (*Report, error) {
	r := &Report{Kernel: mem.KernelRelease()}
	if _, err := os.Stat(devicePath); err == nil {
		r.Device = true
	}
	var c config
	fd, userMode, err := open(&c)
	if err != nil {
		return nil, err
	}
	api := uffdioAPI{API: uffdAPI}
	err = ioctlPtr(fd, ioctlAPI, ptr(&api))
	unix.Close(fd)
	if err != nil {
		return nil, os.NewSyscallError("UFFDIO_API", err)
	}
	r.Features, r.Ioctls, r.UserModeOnly = Feature(api.Features), Ioctls(api.Ioctls), userMode

	// Ranges are probed on a second userfaultfd that negotiated every feature but EVENT_FORK
	// (which needs CAP_SYS_PTRACE and changes nothing here).
	opts := []Option{WithFeatures(r.Features &^ FeatureEventFork)}
	if userMode {
		opts = append(opts, UserModeOnly())
	}
	u, err := New(opts...)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	allModes := []Mode{ModeMissing | ModeWP | ModeMinor, ModeMissing | ModeWP, ModeMissing | ModeMinor, ModeMissing}
	r.AnonModes, r.AnonIoctls, err = probeRanges(u, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, allModes[1:])
	if err != nil {
		return nil, err
	}
	r.ShmemModes, r.ShmemIoctls, err = probeRanges(u, unix.MAP_SHARED|unix.MAP_ANONYMOUS, allModes)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// probeRanges registers one page of fresh memory with the first of modes the kernel takes.
func probeRanges(u *UFFD, flags int, modes []Mode) (Mode, Ioctls, error) {
	mem, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, flags)
	if err != nil {
		return 0, 0, os.NewSyscallError("mmap", err)
	}
	defer unix.Munmap(mem)
	addr := addrOf(mem)
	var lastErr error
	for _, m := range modes {
		ioctls, err := u.RegisterIoctls(addr, pageSize, m)
		if err == nil {
			if err := u.Unregister(addr, pageSize); err != nil {
				return 0, 0, err
			}
			return m, ioctls, nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return 0, 0, err
		}
		lastErr = err
	}
	return 0, 0, lastErr
}
