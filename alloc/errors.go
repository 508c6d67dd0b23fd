package alloc

import (
	"errors"
	"fmt"
)

var (
	// ErrSize reports a size that is zero, negative, overflows when rounded up to pages, or
	// does not fit the object it refers to.
	ErrSize = errors.New("invalid size")

	// ErrUnsupported reports something the running kernel or its configuration does not allow;
	// the message says what, and since which kernel version it exists.
	ErrUnsupported = errors.New("not supported")

	// ErrClosed reports use of a Region or Lease after Close or Release.
	ErrClosed = errors.New("region closed")

	// ErrNoRoom reports a Lend the region's reserved room cannot satisfy.
	ErrNoRoom = errors.New("no room reserved after the region")
)

// Error describes a failed operation on a size of memory. Err wraps the sentinel (ErrSize,
// ErrUnsupported, ...) or the system call error (an *os.SyscallError wrapping the errno).
type Error struct {
	Op   string // "alloc.Shared", "alloc.Memfd", ...
	Size int    // the size the caller asked for
	Err  error
}

// Error returns "op(size bytes): cause".
func (e *Error) Error() string { return fmt.Sprintf("%s(%d bytes): %v", e.Op, e.Size, e.Err) }

// Unwrap returns the cause, so errors.Is and errors.As see the sentinel or the errno.
func (e *Error) Unwrap() error { return e.Err }

// ErrInvalid reports a nil or zero-value Region, Lease or Option, or an argument the
// kernel would reject for its form (a memfd name with a NUL byte, ...).
var ErrInvalid = errors.New("invalid argument")
