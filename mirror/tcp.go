package mirror

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/mirrormem/mirrormem/internal/pagesrv"
)

// TCPOptions tune TCPSource. Zero values select the defaults; negative values, more than 100
// retries or more than 1024 connections are refused (ErrOption) when the pair is made.
type TCPOptions struct {
	// Timeout bounds each attempt at a request: waiting for a free connection, dialling, the
	// request and the last byte of its answer. Default 30 s.
	Timeout time.Duration
	// Retries is the number of extra attempts, each on a new connection, after a transient
	// failure (connection refused, reset or closed, a timeout). Default 3.
	Retries int
	// MaxConns is the most connections each reading process keeps to the server. Default 8.
	MaxConns int
}

// tcpSourceName is the name the library registers its TCP page source under.
const tcpSourceName = "mirrormem/tcp"

func init() {
	RegisterSource(tcpSourceName, func(config []byte) (io.ReaderAt, error) {
		cfg, err := pagesrv.Unmarshal(config)
		if err != nil {
			return nil, err
		}
		return pagesrv.Dial(cfg)
	})
}

// TCPSource serves pages from the image that ServePages serves at addr (host:port), from a
// handler process (see RegisterSource). Give it to ServeFaults.
//
// Mirror connects once to learn the image's size and to pin it: the handler processes read
// that image only. If the server fails, times out or dies (after the retries of transient
// failures), or if another server, or the same one restarted, answers at addr, the page is
// poisoned and the access raises SIGBUS, never reading zeros or another image; FaultErr says
// why. A fault-around window is one request, and several windows are fetched at once over a
// pool of connections. Bytes past the image's end read as zeros. The server must not be this
// program: its goroutines may all be waiting in faults.
//
// Its ReadAt reads from the server in the calling process too (Verify uses it, and so may a
// source of your own, registered with RegisterSource, that takes some pages from the server);
// Close closes the connections it made.
func TCPSource(addr string, o TCPOptions) io.ReaderAt {
	cfg := pagesrv.Config{Addr: addr, Timeout: o.Timeout, Retries: o.Retries, MaxConns: o.MaxConns}
	n := &namedSource{name: tcpSourceName}
	n.prepare = func() error {
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("%w: TCPSource: %v", ErrOption, err)
		}
		// The image is pinned here, once: the handler processes read that one only.
		c, err := pagesrv.Dial(cfg)
		if err != nil {
			return fmt.Errorf("TCPSource: %w", err)
		}
		pinned := c.Config()
		c.Close() // ReadAt in this process, if any, dials again with the pinned config
		if n.config, err = pinned.Marshal(); err != nil {
			return fmt.Errorf("TCPSource: %w", err)
		}
		return nil
	}
	return n
}

// ServePages serves the first size bytes of src to TCPSource clients that connect to l, in
// pages of alloc.PageSize() bytes, until l is closed. It then closes every connection it
// accepted and returns nil once all of them are done (or the error of an Accept that failed
// for good, after closing l). ServePages owns l: it closes l before returning, also when it
// refuses its arguments (a nil listener or source, a negative size, more than 2^32 pages).
//
// src is read by one goroutine per connection, one ReadAt per request (a fault-around window
// of the client), so it must be safe for concurrent use, as io.ReaderAt's contract says. A
// read that fails or ends before size bytes is answered with an error, which the client's
// pair turns into a poisoned page, never zeros. The image must not change while clients read
// it: a client that reconnects gets no notice of a change, only of another server (a new
// ServePages call draws a new token that clients pinned to the old one refuse).
//
// Run it in another program than the one whose pair reads from it: a goroutine that faults
// inside copy() holds up the garbage collector, and so every other goroutine, until its page
// is served. A test that serves itself fills the pages with Populate, or reads them with plain
// loads, which the runtime can preempt.
func ServePages(l net.Listener, src io.ReaderAt, size int64) error {
	if err := pagesrv.Serve(l, src, size); err != nil {
		return fmt.Errorf("ServePages: %w", err)
	}
	return nil
}
