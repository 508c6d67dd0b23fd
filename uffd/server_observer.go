package uffd

import (
	"io"
	"os"
)

// Observer hears, from the serving goroutines, what a Server does for each handled view: the
// counters, fill records and logs of a caller that needs more than Stats (a block of counters
// shared with another process, say). view is the index of the view in the Handle or HandleViews
// call that handled it; offsets and lengths are in bytes of the source object. The calls are on
// the fault path: they must be quick, must not block and must not call the Server.
type Observer interface {
	// Faulted is called when a fault message is taken up, before it is resolved: flags are
	// the message's (0 for a missing fault, FlagMinor, FlagWP).
	Faulted(view int, off int64, flags PagefaultFlags)
	// Resolved is called after each resolving ioctl that mapped n bytes from off through the
	// view: filled from the source (Copied), with zeros (Zeroed), or mapped from the page
	// cache (Continued); and, under WithStaging, when n bytes were written into the page
	// cache (Staged), before the UFFDIO_CONTINUE that maps them (reported as Continued).
	// Fault-around windows are reported as they are resolved, in parts where pages already
	// existed.
	Resolved(view int, off, n int64, how Resolution)
	// Existed is called when resolving the page at off answered EEXIST: someone else had
	// filled or mapped it.
	Existed(view int, off int64)
}

// Resolution says how a resolving ioctl mapped pages.
type Resolution uint8

const (
	Copied    Resolution = 1 // UFFDIO_COPY from the source
	Zeroed    Resolution = 2 // UFFDIO_ZEROPAGE
	Continued Resolution = 3 // UFFDIO_CONTINUE of pages already in the page cache
)

// String names the resolution.
func (r Resolution) String() string {
	switch r {
	case Copied:
		return "copied"
	case Zeroed:
		return "zeroed"
	case Continued:
		return "continued"
	}
	return "resolution(?)"
}

// WithObserver makes the server report what it does to o (see Observer).
func WithObserver(o Observer) ServerOption { return func(c *serverConfig) { c.observer = o } }

// More resolutions, reported by Handled (Resolved reports Copied, Zeroed, Continued and
// Staged only).
const (
	Staged      Resolution = 4 // written into the page cache through the staging file, mapped with UFFDIO_CONTINUE
	Existed     Resolution = 5 // the page existed (EEXIST): filled through another view or an earlier window
	Unprotected Resolution = 6 // write protection lifted
	Failed      Resolution = 7 // the source failed: the page is poisoned in every view, or Serve stops
)

// Tracker is an Observer that also keeps the state of every page, as a handler with a
// verification log does. A Server whose observer implements Tracker asks it before filling and
// tells it after each fault message, and it wakes the waiting threads only after Handled
// returned: whatever Handled records is visible to a thread once its access completes.
type Tracker interface {
	Observer
	// Filled reports whether the page at object offset off is known to be filled: a
	// fault-around window of missing pages stops before it.
	Filled(off int64) bool
	// Protect reports whether pages resolved through view are to be mapped write-protected
	// (write tracking; the view must be registered with ModeWP).
	Protect(view int) bool
	// Removed is called for an EventRemove (MADV_DONTNEED, MADV_REMOVE) over [off, off+n) of view,
	// before any fault read after the event is handled: no worker reads meanwhile, so keep it
	// short.
	Removed(view int, off, n int64)
	// Handled is called once per fault message, after it is resolved and before its waiters
	// are woken (except on the fast path: see Filling).
	Handled(h Handled)
	// Filling is the fast path of a server with one worker: it is called before the ioctl that
	// resolves h's whole window (h.Len bytes, h.How), and records h as done, as Resolved and
	// Handled would, so that the ioctl itself may wake the faulting thread: one system call per
	// fault. It returns a token for Unfilled.
	Filling(h Handled) (token uint64)
	// Unfilled follows Filling when the ioctl resolved only done bytes of h.Len: the tracker
	// takes back the rest. The fault then goes on the usual way (Resolved, Existed, then
	// Handled with Amend set to the token).
	Unfilled(h Handled, token uint64, done int64)
}

// Handled describes a fault message once it is handled.
type Handled struct {
	View   int            // index of the view in its Handle or HandleViews call
	Off    int64          // object offset of the faulting page
	Len    int64          // bytes resolved from Off (fault-around included); 0 if none
	Flags  PagefaultFlags // the message's flags (FlagMinor, FlagWP, FlagWrite)
	Thread uint32         // the faulting thread (with FeatureThreadID; 0 otherwise)
	How    Resolution     // what was done
	Amend  uint64         // nonzero: the token of a Filling for this fault, whose record this one replaces
}

// MappedSource is an io.ReaderAt that can also lend its bytes in place, such as a file mapped
// into memory: the server then copies pages straight from Bytes into the faulting range, with
// no ReadAt copy. Bytes returns nil when it cannot lend [off, off+n). If copying from the lent
// bytes faults (a file truncated under its mapping), the server reads the window with ReadAt.
type MappedSource interface {
	io.ReaderAt
	Bytes(off, n int64) []byte
}

// WithStaging serves missing faults by staging: the pages are written into the page cache
// through f, a descriptor of the object the views map (its memfd, not registered), and then
// mapped with UFFDIO_CONTINUE. The views must be registered ModeMissing|ModeMinor. A page
// already in the page cache is never written again, so writes made through a view are never
// overwritten. f stays the caller's.
func WithStaging(f *os.File) ServerOption { return func(c *serverConfig) { c.stage = f } }
