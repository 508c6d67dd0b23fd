package uffd

// The userfaultfd ABI from include/uapi/linux/userfaultfd.h, in pure Go. Sizes and numbers are
// checked against the kernel header by TestABIMatchesHeader.

const (
	uffdAPI = 0xAA

	iocType = 0xAA // UFFDIO and USERFAULTFD_IOC

	nrRegister     = 0x00
	nrUnregister   = 0x01
	nrWake         = 0x02
	nrCopy         = 0x03
	nrZeropage     = 0x04
	nrMove         = 0x05
	nrWriteprotect = 0x06
	nrContinue     = 0x07
	nrPoison       = 0x08
	nrAPI          = 0x3F

	sizeofAPI          = 24
	sizeofRange        = 16
	sizeofRegister     = 32
	sizeofCopy         = 40
	sizeofZeropage     = 32
	sizeofWriteprotect = 24
	sizeofContinue     = 32
	sizeofPoison       = 32
	sizeofMove         = 40
	sizeofMsg          = 32
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | iocType<<8 | nr }

const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

var (
	ioctlAPI          = ioc(iocRead|iocWrite, nrAPI, sizeofAPI)
	ioctlRegister     = ioc(iocRead|iocWrite, nrRegister, sizeofRegister)
	ioctlUnregister   = ioc(iocRead, nrUnregister, sizeofRange)
	ioctlWake         = ioc(iocRead, nrWake, sizeofRange)
	ioctlCopy         = ioc(iocRead|iocWrite, nrCopy, sizeofCopy)
	ioctlZeropage     = ioc(iocRead|iocWrite, nrZeropage, sizeofZeropage)
	ioctlMove         = ioc(iocRead|iocWrite, nrMove, sizeofMove)
	ioctlWriteprotect = ioc(iocRead|iocWrite, nrWriteprotect, sizeofWriteprotect)
	ioctlContinue     = ioc(iocRead|iocWrite, nrContinue, sizeofContinue)
	ioctlPoison       = ioc(iocRead|iocWrite, nrPoison, sizeofPoison)
	// USERFAULTFD_IOC_NEW on /dev/userfaultfd (6.1+).
	ioctlDevNew = ioc(iocNone, 0x00, 0)
)

type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

type uffdioRange struct {
	Start uint64
	Len   uint64
}

type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

type uffdioWriteprotect struct {
	Range uffdioRange
	Mode  uint64
}

type uffdioContinue struct {
	Range  uffdioRange
	Mode   uint64
	Mapped int64
}

type uffdioPoison struct {
	Range   uffdioRange
	Mode    uint64
	Updated int64
}

type uffdioMove struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Move int64
}

// Mode bits of the resolving ioctls.
const (
	copyModeDontwake         = 1 << 0
	copyModeWP               = 1 << 1
	zeropageModeDontwake     = 1 << 0
	writeprotectModeWP       = 1 << 0
	writeprotectModeDontwake = 1 << 1
	continueModeDontwake     = 1 << 0
	continueModeWP           = 1 << 1
	poisonModeDontwake       = 1 << 0
	moveModeDontwake         = 1 << 0
	moveModeAllowSrcHoles    = 1 << 1
)

// userfaultfd(2) flags.
const userModeOnly = 1 // UFFD_USER_MODE_ONLY
