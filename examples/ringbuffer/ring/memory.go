package ring

import (
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
	"golang.org/x/sys/unix"
)

// memory is what a ring maps: its header and its data seen twice, back to back.
type memory struct {
	hdr    *header
	view   []byte // 2n: mirror.Pair.Contiguous
	hdrFD  int    // -1 for a ring made by New
	dataFD int
	pair   *mirror.Pair
	hdrReg *alloc.Region
	local  []byte // keeps the Go-heap header of a ring made by New alive
}

// mirrorData mirrors a region with room reserved after it, and gives the region to the pair:
// one Close removes both views.
func mirrorData(reg *alloc.Region) (*mirror.Pair, error) {
	pair, err := mirror.Mirror(reg, mirror.Adjacent(), mirror.CloseRegion())
	if err != nil {
		reg.Close()
		return nil, err
	}
	return pair, nil
}

// checkSize refuses sizes that are not positive or whose two views could not fit in the
// address space (the rounding to pages would overflow first).
func checkSize(op string, size int) error {
	if size <= 0 {
		return fmt.Errorf("ring: %s(%d): the size must be positive", op, size)
	}
	if size > math.MaxInt/4 {
		return fmt.Errorf("ring: %s(%d): too large: the ring is mapped twice, back to back, and needs twice its size in address space", op, size)
	}
	return nil
}

func newLocalMemory(size int) (*memory, error) {
	if err := checkSize("New", size); err != nil {
		return nil, err
	}
	reg, err := alloc.Shared(size, alloc.WithRoom(roundPage(size)))
	if err != nil {
		return nil, fmt.Errorf("ring: New(%d): %w", size, err)
	}
	pair, err := mirrorData(reg)
	if err != nil {
		return nil, fmt.Errorf("ring: New(%d): %w", size, err)
	}
	h, local := newLocalHeader()
	populate(pair.Contiguous())
	return &memory{hdr: h, view: pair.Contiguous(), hdrFD: -1, dataFD: -1, pair: pair, local: local}, nil
}

// populate maps every page of both views now (MADV_POPULATE_WRITE, Linux 5.14), so that the
// first lap of the ring does not take a page fault per page and per view: a fault costs more
// than copying the page (about 15 us on the virtual machines this was measured on, against a
// few hundred nanoseconds), which would show as latency spikes on the first lap and make a
// young ring look slow. It changes no byte. On older kernels the pages fault in on first use.
func populate(view []byte) {
	_ = unix.Madvise(view, unix.MADV_POPULATE_WRITE)
}

func newSharedMemory(name string, size int) (*memory, error) {
	if err := checkSize("NewShared", size); err != nil {
		return nil, err
	}
	hreg, err := sealedMemfd(name+"-header", headerSize)
	if err != nil {
		return nil, fmt.Errorf("ring: NewShared(%d): header: %w", size, err)
	}
	reg, err := sealedMemfd(name, roundPage(size), alloc.WithRoom(roundPage(size)))
	if err != nil {
		hreg.Close()
		return nil, fmt.Errorf("ring: NewShared(%d): %w", size, err)
	}
	return finishShared(hreg, reg, "NewShared")
}

// sealedMemfd maps a new memfd of size bytes sealed against shrinking (F_SEAL_SHRINK): the
// other process of a shared ring cannot truncate it under this one, whose next access to the
// lost pages would raise SIGBUS and end it.
func sealedMemfd(name string, size int, opts ...alloc.Option) (*alloc.Region, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	defer unix.Close(fd) // the region keeps a duplicate
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, os.NewSyscallError("ftruncate", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		return nil, os.NewSyscallError("fcntl(F_ADD_SEALS)", err)
	}
	return alloc.FromFD(fd, size, opts...)
}

// checkSealed refuses a file that is not sealed against shrinking (see sealedMemfd).
func checkSealed(fd int, what string) error {
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		return fmt.Errorf("ring: Attach: %s fd %d is not a memfd sealed against shrinking, as NewShared makes them: the other process could truncate it under this one", what, fd)
	}
	return nil
}

func attachSharedMemory(headerFD, dataFD int) (*memory, error) {
	var st unix.Stat_t
	if err := unix.Fstat(dataFD, &st); err != nil {
		return nil, fmt.Errorf("ring: Attach: data fd %d: %w", dataFD, os.NewSyscallError("fstat", err))
	}
	size := int(st.Size)
	if size <= 0 || size%alloc.PageSize() != 0 {
		return nil, fmt.Errorf("ring: Attach: data fd %d holds %d bytes, not a whole number of pages: it is not the data file of a ring", dataFD, size)
	}
	hreg, err := alloc.FromFD(headerFD, headerSize)
	if err != nil {
		return nil, fmt.Errorf("ring: Attach: header: %w", err)
	}
	h, err := headerAt(hreg.Bytes())
	if err == nil {
		err = checkAttached(h, headerFD, dataFD, size)
	}
	if err == nil {
		err = errors.Join(checkSealed(headerFD, "header"), checkSealed(dataFD, "data"))
	}
	if err != nil {
		return nil, errors.Join(err, hreg.Close())
	}
	reg, err := alloc.FromFD(dataFD, size, alloc.WithRoom(size))
	if err != nil {
		hreg.Close()
		return nil, fmt.Errorf("ring: Attach: data: %w", err)
	}
	return finishShared(hreg, reg, "Attach")
}

func finishShared(hreg, reg *alloc.Region, op string) (*memory, error) {
	h, err := headerAt(hreg.Bytes())
	if err != nil {
		reg.Close()
		hreg.Close()
		return nil, fmt.Errorf("ring: %s: %w", op, err)
	}
	dataFD := reg.Fd()
	pair, err := mirrorData(reg)
	if err != nil {
		hreg.Close()
		return nil, fmt.Errorf("ring: %s: %w", op, err)
	}
	populate(pair.Contiguous())
	return &memory{hdr: h, view: pair.Contiguous(), hdrFD: hreg.Fd(), dataFD: dataFD, pair: pair, hdrReg: hreg}, nil
}

func (m *memory) release() error {
	err := m.pair.Close()
	if m.hdrReg != nil {
		err = errors.Join(err, m.hdrReg.Close())
	}
	return err
}

func roundPage(n int) int {
	ps := alloc.PageSize()
	return (n + ps - 1) / ps * ps
}
