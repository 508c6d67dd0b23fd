package uffd

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
	// cache (Continued). Fault-around windows are reported as they are resolved, in parts
	// where pages already existed.
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
