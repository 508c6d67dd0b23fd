package mirror

import (
	"errors"
	"fmt"

	"github.com/mirrormem/mirrormem/alloc"
)

var (
	// ErrNotShared reports private memory (MAP_PRIVATE, anonymous or file, which includes the
	// Go heap): the kernel cannot duplicate it, because each view would be copy-on-write.
	// It is detected before mremap is called, so the kernel never logs its "attempted to
	// duplicate a private mapping" warning.
	ErrNotShared = errors.New("not a shared mapping")

	// ErrUnsupported reports memory the kernel cannot mirror with the chosen backend (hugetlb,
	// special device mappings, sealed mappings, a backend that needs a descriptor the memory
	// lacks, ...); the message says what and since which kernel. It is alloc.ErrUnsupported, so
	// one errors.Is covers both packages.
	ErrUnsupported = alloc.ErrUnsupported

	// ErrRange reports memory that cannot be used as given: a slice that is empty, not page
	// aligned or spans more than one mapping; an offset or view index outside a pair; a fault
	// source that overlaps the memory it would fill. Misused options are ErrOption.
	ErrRange = errors.New("invalid range")

	// ErrOption reports an option that cannot be used as given: nil, a value out of its
	// range, or an option that needs another one (VerifyFaults without ServeFaults, say).
	ErrOption = errors.New("invalid option")

	// ErrNotMapped reports memory that is not mapped at all, or only partly.
	ErrNotMapped = errors.New("memory not mapped")

	// ErrPastObject reports a view that would extend past the end of its backing object (a
	// memfd or file that was truncated, for example): touching that part would raise SIGBUS.
	ErrPastObject = errors.New("range extends past the end of its backing object")

	// ErrResident reports memory that already holds data where ServeFaults would fill it
	// from a source: the source would never be asked for those pages.
	ErrResident = errors.New("pages already hold data")

	// ErrClosed reports a Region that was already closed.
	ErrClosed = alloc.ErrClosed
)

// Error describes a refused or failed Mirror or Of. Err wraps one of the sentinel errors above
// and, where a system call failed, its *os.SyscallError (so errors.Is(err, unix.ENOMEM) works).
type Error struct {
	Op   string  // "mirror.Mirror" or "mirror.Of"
	Addr uintptr // the memory to mirror
	Len  int
	Err  error
}

// Error says which call failed, on which memory, and why.
func (e *Error) Error() string {
	return fmt.Sprintf("%s [%#x, +%d): %v", e.Op, e.Addr, e.Len, e.Err)
}

// Unwrap returns the sentinel (and system call) error inside, for errors.Is and errors.As.
func (e *Error) Unwrap() error { return e.Err }
