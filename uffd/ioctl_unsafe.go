package uffd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

func ptr[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }

func sysUserfaultfd(flags int) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errnoErr(errno)
	}
	return nil
}

func ioctlInt(fd int, req uintptr, arg uintptr) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return -1, errnoErr(errno)
	}
	return int(r), nil
}

// errnoErr returns preallocated values for the errors of the fault path, so that EEXIST and
// EAGAIN cost no allocation.
func errnoErr(e unix.Errno) error {
	switch e {
	case unix.EAGAIN:
		return unix.EAGAIN
	case unix.EEXIST:
		return unix.EEXIST
	case unix.ENOENT:
		return unix.ENOENT
	case unix.ESRCH:
		return unix.ESRCH
	}
	return e
}

// rawIoctl is for the handshake, before the fd is shared with anyone.
func (u *UFFD) rawIoctl(req uintptr, arg unsafe.Pointer) error {
	return ioctlPtr(u.fd, req, arg)
}

// ioctl runs one ioctl holding a reference, so that Close cannot close (and the process reuse)
// the descriptor number while the call is in flight.
func (u *UFFD) ioctl(req uintptr, arg unsafe.Pointer) error {
	if !u.acquire() {
		return errClosed
	}
	err := ioctlPtr(u.fd, req, arg)
	u.release()
	return err
}

// The operations whose errors are wrapped; opNames[op] is the name in the error.
type op uint8

const (
	opCopy op = iota
	opZeropage
	opContinue
	opPoison
	opMove
	opWriteprotect
	opWake
	opUnregister
	opRegister
	nOps
)

var opNames = [nOps]string{"UFFDIO_COPY", "UFFDIO_ZEROPAGE", "UFFDIO_CONTINUE", "UFFDIO_POISON",
	"UFFDIO_MOVE", "UFFDIO_WRITEPROTECT", "UFFDIO_WAKE", "UFFDIO_UNREGISTER", "UFFDIO_REGISTER"}

// hotErrors are the preallocated errors of the fault path, so that they cost no allocation:
// EEXIST (someone filled the page first), EAGAIN (an event is pending, or a short copy), ENOENT
// (the range is no longer registered, e.g. unmapped meanwhile) and ESRCH (the process that
// registered the memory is gone).
var hotErrors [nOps][4]error

var hotErrnos = [4]unix.Errno{unix.EEXIST, unix.EAGAIN, unix.ENOENT, unix.ESRCH}

func init() {
	for i, name := range opNames {
		for j, e := range hotErrnos {
			hotErrors[i][j] = os.NewSyscallError(name, e)
		}
	}
}

// opError wraps errno with the ioctl's name, so errors.Is(err, unix.EEXIST) works.
func opError(o op, err error) error {
	if err == nil {
		return nil
	}
	switch err {
	case unix.EEXIST:
		return hotErrors[o][0]
	case unix.EAGAIN:
		return hotErrors[o][1]
	case unix.ENOENT:
		return hotErrors[o][2]
	case unix.ESRCH:
		return hotErrors[o][3]
	case errClosed:
		return err
	}
	return os.NewSyscallError(opNames[o], err)
}

// Register registers [addr, addr+length) for the faults selected by mode (UFFDIO_REGISTER).
// addr and length must be page aligned, and the range must be anonymous, shmem or hugetlb memory.
func (u *UFFD) Register(addr uintptr, length int, mode Mode) error {
	_, err := u.RegisterIoctls(addr, length, mode)
	return err
}

// RegisterIoctls is Register that also returns the ioctls usable on the range, corrected for what
// the kernel over-reports: UFFDIO_MOVE is offered on shmem but only works on private anonymous
// memory, so it is removed for shared mappings.
func (u *UFFD) RegisterIoctls(addr uintptr, length int, mode Mode) (Ioctls, error) {
	if err := checkRange("UFFDIO_REGISTER", addr, length); err != nil {
		return 0, err
	}
	if mode == 0 || mode&^(ModeMissing|ModeWP|ModeMinor) != 0 {
		return 0, &RangeError{Op: "UFFDIO_REGISTER", Addr: addr, Len: length,
			Why: fmt.Sprintf("mode %v: give ModeMissing, ModeWP, ModeMinor or a combination", mode)}
	}
	r := uffdioRegister{Range: uffdioRange{Start: uint64(addr), Len: uint64(length)}, Mode: uint64(mode)}
	if err := u.ioctl(ioctlRegister, ptr(&r)); err != nil {
		return 0, registerError(u, addr, length, mode, err)
	}
	ioctls := Ioctls(r.Ioctls)
	if ioctls&IoctlMove != 0 && anyShared(addr, length) {
		ioctls &^= IoctlMove
	}
	return ioctls, nil
}

// Unregister unregisters [addr, addr+length) (UFFDIO_UNREGISTER) and wakes its blocked threads.
func (u *UFFD) Unregister(addr uintptr, length int) error {
	if err := checkRange("UFFDIO_UNREGISTER", addr, length); err != nil {
		return err
	}
	r := uffdioRange{Start: uint64(addr), Len: uint64(length)}
	return opError(opUnregister, u.ioctl(ioctlUnregister, ptr(&r)))
}

// Wake wakes the threads blocked on faults in [addr, addr+length) (UFFDIO_WAKE). Needed after
// a resolve made with DontWake, after an error (errors never wake), and for the other view of a
// mirror: resolving a page through one view does not wake a thread faulting through another.
func (u *UFFD) Wake(addr uintptr, length int) error {
	if err := checkRange("UFFDIO_WAKE", addr, length); err != nil {
		return err
	}
	r := uffdioRange{Start: uint64(addr), Len: uint64(length)}
	return opError(opWake, u.ioctl(ioctlWake, ptr(&r)))
}

// ResolveFlags modify the resolving ioctls.
type ResolveFlags uint32

const (
	// DontWake leaves the faulting threads asleep; call Wake after a batch.
	DontWake ResolveFlags = 1 << iota
	// WriteProtect maps the page write-protected (COPY and CONTINUE, needs ModeWP on the range).
	WriteProtect
	// AllowSrcHoles lets MOVE skip holes in the source.
	AllowSrcHoles
)

// Copy atomically copies length bytes from src into the registered range at dst (UFFDIO_COPY)
// and returns the bytes copied. A short copy returns the bytes done and an error matching
// unix.EAGAIN: call again for the rest (CopyAll does). EEXIST means the page is already there.
//
// Preconditions: dst and length are multiples of the page size (of the huge page size on
// hugetlb memory) and length is positive, else Copy returns a *RangeError without a system
// call; src points to at least length readable bytes, at any alignment, anywhere: an mmap'd
// buffer, the Go heap, or the caller's stack (Copy keeps src alive for the call, and the
// runtime cannot move a goroutine stack while the kernel reads from it).
//
// The resolving calls (Copy, ZeroPage, Continue, WriteProtectRange, Poison, Move, Wake) refuse
// an empty or unaligned range the same way. Their errors wrap the errno with the ioctl's name
// (errors.Is(err, unix.EEXIST) works); EEXIST, EAGAIN, ENOENT and ESRCH cost no allocation.
func (u *UFFD) Copy(dst uintptr, src unsafe.Pointer, length int, flags ResolveFlags) (int, error) {
	if err := checkRange("UFFDIO_COPY", dst, length); err != nil {
		return 0, err
	}
	if src == nil {
		return 0, &RangeError{Op: "UFFDIO_COPY", Addr: dst, Len: length, Why: "the source is nil"}
	}
	var mode uint64
	if flags&DontWake != 0 {
		mode |= copyModeDontwake
	}
	if flags&WriteProtect != 0 {
		mode |= copyModeWP
	}
	if !u.acquire() {
		return 0, errClosed
	}
	// src may point into a goroutine stack (the caller's buffer), which the runtime moves when
	// the stack grows at a function call. From the moment its address becomes an integer to
	// the system call, nothing may call a function that can grow the stack: the struct is
	// filled here and unix.Syscall (nosplit, like the runtime's entersyscall it calls) is
	// called directly, and a stack is never moved while its goroutine is in a system call.
	c := uffdioCopy{Dst: uint64(dst), Len: uint64(length), Mode: mode}
	c.Src = uint64(uintptr(src))
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(u.fd), ioctlCopy, uintptr(unsafe.Pointer(&c)))
	u.release()
	runtime.KeepAlive(src)
	if errno != 0 {
		return doneBytes(c.Copy), opError(opCopy, errnoErr(errno))
	}
	return doneBytes(c.Copy), nil
}

// CopyAll is Copy that finishes a short copy, retrying while the kernel answers EAGAIN with
// progress. It returns the bytes copied and the first error that was not a retryable short copy.
func (u *UFFD) CopyAll(dst uintptr, src []byte, flags ResolveFlags) (int, error) {
	done := 0
	for done < len(src) {
		n, err := u.Copy(dst+uintptr(done), unsafe.Pointer(&src[done]), len(src)-done, flags)
		done += n
		if err != nil {
			if isEAGAIN(err) && n > 0 {
				continue
			}
			return done, err
		}
	}
	return done, nil
}

// ZeroPage maps zeroed pages over [addr, addr+length) (UFFDIO_ZEROPAGE) and returns the bytes done.
func (u *UFFD) ZeroPage(addr uintptr, length int, flags ResolveFlags) (int, error) {
	if err := checkRange("UFFDIO_ZEROPAGE", addr, length); err != nil {
		return 0, err
	}
	z := uffdioZeropage{Range: uffdioRange{Start: uint64(addr), Len: uint64(length)}}
	if flags&DontWake != 0 {
		z.Mode |= zeropageModeDontwake
	}
	err := u.ioctl(ioctlZeropage, unsafe.Pointer(&z))
	return doneBytes(z.Zeropage), opError(opZeropage, err)
}

// Continue maps the pages already in the page cache over [addr, addr+length) to resolve minor
// faults (UFFDIO_CONTINUE) and returns the bytes done. EFAULT: a page is not in the page cache.
func (u *UFFD) Continue(addr uintptr, length int, flags ResolveFlags) (int, error) {
	if err := checkRange("UFFDIO_CONTINUE", addr, length); err != nil {
		return 0, err
	}
	c := uffdioContinue{Range: uffdioRange{Start: uint64(addr), Len: uint64(length)}}
	if flags&DontWake != 0 {
		c.Mode |= continueModeDontwake
	}
	if flags&WriteProtect != 0 {
		c.Mode |= continueModeWP
	}
	err := u.ioctl(ioctlContinue, unsafe.Pointer(&c))
	return doneBytes(c.Mapped), opError(opContinue, err)
}

// WriteProtectRange sets (protect true) or clears write protection on [addr, addr+length)
// (UFFDIO_WRITEPROTECT). Clearing it wakes the blocked writers unless flags has DontWake.
func (u *UFFD) WriteProtectRange(addr uintptr, length int, protect bool, flags ResolveFlags) error {
	if err := checkRange("UFFDIO_WRITEPROTECT", addr, length); err != nil {
		return err
	}
	w := uffdioWriteprotect{Range: uffdioRange{Start: uint64(addr), Len: uint64(length)}}
	if protect {
		w.Mode |= writeprotectModeWP
	}
	if flags&DontWake != 0 {
		w.Mode |= writeprotectModeDontwake
	}
	return opError(opWriteprotect, u.ioctl(ioctlWriteprotect, unsafe.Pointer(&w)))
}

// Poison marks [addr, addr+length) as poisoned (UFFDIO_POISON, 6.6+): a later access raises
// SIGBUS as if the memory had failed. Returns the bytes done.
func (u *UFFD) Poison(addr uintptr, length int, flags ResolveFlags) (int, error) {
	if err := checkRange("UFFDIO_POISON", addr, length); err != nil {
		return 0, err
	}
	p := uffdioPoison{Range: uffdioRange{Start: uint64(addr), Len: uint64(length)}}
	if flags&DontWake != 0 {
		p.Mode |= poisonModeDontwake
	}
	err := u.ioctl(ioctlPoison, unsafe.Pointer(&p))
	return doneBytes(p.Updated), opError(opPoison, err)
}

// Move moves pages from src to dst (UFFDIO_MOVE, 6.8+, private anonymous memory only) and
// returns the bytes moved.
func (u *UFFD) Move(dst, src uintptr, length int, flags ResolveFlags) (int, error) {
	if err := checkRange("UFFDIO_MOVE", dst, length); err != nil {
		return 0, err
	}
	if err := checkRange("UFFDIO_MOVE (source)", src, length); err != nil {
		return 0, err
	}
	m := uffdioMove{Dst: uint64(dst), Src: uint64(src), Len: uint64(length)}
	if flags&DontWake != 0 {
		m.Mode |= moveModeDontwake
	}
	if flags&AllowSrcHoles != 0 {
		m.Mode |= moveModeAllowSrcHoles
	}
	err := u.ioctl(ioctlMove, unsafe.Pointer(&m))
	return doneBytes(m.Move), opError(opMove, err)
}

// doneBytes turns the kernel's progress field (bytes, or -errno) into a byte count.
func doneBytes(v int64) int {
	if v < 0 {
		return 0
	}
	return int(v)
}

func isEAGAIN(err error) bool {
	se, ok := err.(*os.SyscallError)
	return ok && se.Err == unix.EAGAIN
}

// ReadMessages reads as many pending messages as fit in msgs with one read(2), blocking (parked
// in the runtime poller, no OS thread held; in poll(2) on this thread under WithoutPoller)
// until at least one is pending. It returns
// os.ErrClosed (wrapped) once the UFFD is closed. It allocates nothing.
func (u *UFFD) ReadMessages(msgs []Msg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if u.unpolled {
		return u.pollMessages(msgs)
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&msgs[0])), len(msgs)*sizeofMsg)
	n, err := u.f.Read(buf)
	if err != nil {
		return 0, err
	}
	return n / sizeofMsg, nil
}

// waitReadable calls try, which reads without blocking and returns how many messages it read,
// until it reads some or fails, waiting between calls until the userfaultfd is readable: parked
// in the runtime poller (in poll(2) on this thread under WithoutPoller). It is ReadMessages
// with the read the caller's (the Server's, which applies the events it reads before another
// worker reads). try must have read until EAGAIN when it returns 0: the poller wakes on new
// messages only.
func (u *UFFD) waitReadable(try func() (int, error)) error {
	if u.unpolled {
		_, err := u.pollUntil(try)
		return err
	}
	rc, err := u.f.SyscallConn()
	if err != nil {
		return err
	}
	var terr error
	if err := rc.Read(func(uintptr) bool {
		var n int
		n, terr = try()
		return n > 0 || terr != nil
	}); err != nil {
		if u.state.Load()&closingBit != 0 {
			return errClosed // the poller's "use of closed file", as ReadMessages reports it
		}
		return err
	}
	return terr
}

// pollMessages is ReadMessages for a UFFD outside the runtime poller: it waits in poll(2) on
// this thread.
func (u *UFFD) pollMessages(msgs []Msg) (int, error) {
	return u.pollUntil(func() (int, error) { return u.TryReadMessages(msgs) })
}

// pollUntil calls try until it returns messages or an error, waiting in poll(2) between calls.
func (u *UFFD) pollUntil(try func() (int, error)) (int, error) {
	for {
		if n, err := try(); n > 0 || err != nil {
			return n, err
		}
		pfd := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
			return 0, os.NewSyscallError("poll", err)
		}
		if pfd[0].Revents&unix.POLLNVAL != 0 {
			return 0, errClosed
		}
		if pfd[0].Revents&unix.POLLIN == 0 && pfd[0].Revents&unix.POLLERR != 0 {
			if err := u.restoreNonblock(); err != nil {
				return 0, err
			}
		}
	}
}

// restoreNonblock answers POLLERR from poll(2) on the userfaultfd. The kernel reports it only
// for a userfaultfd whose open file is blocking, or whose UFFDIO_API handshake is not done
// (fs/userfaultfd.c, userfaultfd_poll): someone cleared O_NONBLOCK, in this process or in
// another that holds the same userfaultfd (the flag belongs to the open file, not to the
// descriptor). It sets the flag again, and the caller polls again.
func (u *UFFD) restoreNonblock() error {
	fl, err := unix.FcntlInt(uintptr(u.fd), unix.F_GETFL, 0)
	if err != nil {
		return os.NewSyscallError("fcntl", err)
	}
	if fl&unix.O_NONBLOCK != 0 {
		return errors.New("uffd: poll(2) reports POLLERR on the non-blocking userfaultfd: its UFFDIO_API handshake is not done")
	}
	if err := unix.SetNonblock(u.fd, true); err != nil {
		return os.NewSyscallError("fcntl", err)
	}
	u.nonblockRestored.Add(1)
	return nil
}

// TryReadMessages is ReadMessages that never blocks: with nothing pending it returns 0, nil.
func (u *UFFD) TryReadMessages(msgs []Msg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&msgs[0])), len(msgs)*sizeofMsg)
	if !u.acquire() {
		return 0, errClosed
	}
	n, err := unix.Read(u.fd, buf)
	u.release()
	if err == unix.EAGAIN {
		return 0, nil
	}
	if err != nil {
		return 0, os.NewSyscallError("read", err)
	}
	return n / sizeofMsg, nil
}

// addrOf returns the address of b's first byte (b must not be empty).
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// AddrOf returns the address of b's first byte, for Register and the resolving calls, which
// take addresses: b is typically a mapping from mmap(2), which the garbage collector never
// moves. It returns 0 for an empty slice.
func AddrOf(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return addrOf(b)
}
