package pagesrv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/mirrormem/mirrormem/internal/netsrc"
)

// ErrChanged is wrapped by the errors that show that the server no longer serves the image
// the client pinned: another size, page size or token (another server, or a restarted one).
var ErrChanged = errors.New("pagesrv: not the pinned image")

// ErrClosed is returned by ReadAt after Close, and wrapped by the error of a ReadAt that Close
// interrupted.
var ErrClosed = errors.New("pagesrv: client is closed")

// Error describes a read that failed for good: a failure that is not transient, or a
// transient one that persisted through every retry.
type Error struct {
	Addr         string // the server
	First, Count uint32 // the pages asked
	Attempts     int    // requests made
	Err          error  // the last cause
}

// Error returns a message naming the server, the last cause, the pages and the attempts (in
// that order: fault handlers keep only the start of a long message).
func (e *Error) Error() string {
	pages := "page " + strconv.FormatUint(uint64(e.First), 10)
	if e.Count > 1 {
		pages = fmt.Sprintf("pages %d-%d", e.First, uint64(e.First)+uint64(e.Count)-1)
	}
	return fmt.Sprintf("pagesrv: server %s: %v (%s, %s)", e.Addr, e.Err, pages, netsrc.Attempts(e.Attempts))
}

// Unwrap returns the last cause.
func (e *Error) Unwrap() error { return e.Err }

// ServerError is an error the server reported in an answer (its source failed to read).
type ServerError struct {
	Msg string // the server's message, at most 1024 bytes
}

// Error returns the server's message.
func (e *ServerError) Error() string { return e.Msg }

// Client reads the pages of one image from a page server. It is safe for concurrent use.
type Client struct {
	cfg     Config // pinned
	g       Greeting
	timeout time.Duration
	retry   netsrc.Retry
	dialer  net.Dialer

	slots  chan struct{}   // one per connection, busy or idle
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	done   <-chan struct{} // ctx.Done()

	mu     sync.Mutex
	closed bool
	idle   []*conn
	live   map[*conn]struct{}
}

// conn is one connection of the pool.
type conn struct {
	c   net.Conn
	hdr [requestLen]byte
}

// Dial validates cfg and connects to the server, whose greeting tells the image's size and
// page size (Size, Config). If cfg pins an image (Token set), a server that greets with another
// one fails Dial with ErrChanged. The connection is kept for the first reads.
func Dial(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := cfg.tuning()
	c := &Client{cfg: cfg, timeout: d.Timeout, slots: make(chan struct{}, d.MaxConns), live: map[*conn]struct{}{}}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.done = c.ctx.Done()
	c.retry = netsrc.Retry{Retries: d.Retries, Done: c.done, Closed: ErrClosed}
	c.dialer = net.Dialer{Timeout: d.Timeout, KeepAlive: 15 * time.Second}
	var cn *conn
	attempts, err := c.retry.Do(func(int) (transient bool, err error) {
		c.slots <- struct{}{}
		cn, transient, err = c.connect(time.Now().Add(c.timeout))
		if err != nil {
			<-c.slots
		}
		return transient, err
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("pagesrv: server %s: %w (%s)", cfg.Addr, err, netsrc.Attempts(attempts))
	}
	c.put(cn)
	return c, nil
}

// Size returns the image's size in bytes.
func (c *Client) Size() int64 { return int64(c.g.Size) }

// PageSize returns the server's page size.
func (c *Client) PageSize() int64 { return int64(c.g.PageSize) }

// Config returns the Config that Dial was given, with Size, PageSize and Token set from the
// greeting: a Client made from it in another process reads the same image, or fails with
// ErrChanged.
func (c *Client) Config() Config { return c.cfg }

// Close interrupts reads in progress (they fail with an error wrapping ErrClosed) and closes
// every connection. Later reads return ErrClosed. Close is idempotent and returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.cancel()
	for cn := range c.live {
		cn.c.Close()
	}
	c.idle = nil
	return nil
}

// ReadAt reads len(p) bytes at offset off, following the io.ReaderAt contract: it returns
// len(p) and nil; or, if the range runs past the end of the image, the bytes up to the end and
// io.EOF; or 0 and an error (an *Error). An empty p reads nothing and returns 0 and nil. The
// contents of p are unspecified after an error. A negative off is an error.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("pagesrv: ReadAt at negative offset %d", off)
	}
	select {
	case <-c.done:
		return 0, ErrClosed
	default:
	}
	if len(p) == 0 {
		return 0, nil
	}
	size := int64(c.g.Size)
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	page, maxPages := int64(c.g.PageSize), int64(c.g.MaxPages)
	var scratch []byte
	for done := int64(0); done < n; {
		o := off + done
		skip := o % page
		count := min(maxPages, (skip+n-done+page-1)/page)
		want := min(count*page-skip, n-done)
		dst := p[done : done+want]
		if skip != 0 || want != count*page {
			// A partial page at either end (an unaligned read, or the image's last page):
			// the answer is whole pages, received aside.
			if int64(cap(scratch)) < count*page {
				scratch = make([]byte, count*page)
			}
			dst = scratch[:count*page]
		}
		if err := c.fetch(dst, uint32(o/page), uint32(count)); err != nil {
			return 0, err
		}
		if &dst[0] != &p[done] {
			copy(p[done:done+want], dst[skip:])
		}
		done += want
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// fetch fills dst with pages [first, first+count), with retries, each on a new connection.
func (c *Client) fetch(dst []byte, first, count uint32) error {
	attempts, err := c.retry.Do(func(attempt int) (bool, error) {
		transient, err := c.attempt(dst, first, count, attempt > 1)
		if transient {
			c.dropIdle() // probably as dead as the one that failed
		}
		return transient, err
	})
	if err != nil {
		return &Error{Addr: c.cfg.Addr, First: first, Count: count, Attempts: attempts, Err: err}
	}
	return nil
}

// attempt makes one request on a pooled connection (a new one if fresh). It reports whether a
// failure is transient.
func (c *Client) attempt(dst []byte, first, count uint32, fresh bool) (transient bool, err error) {
	deadline := time.Now().Add(c.timeout)
	cn, transient, err := c.get(deadline, fresh)
	if err != nil {
		return transient, err
	}
	ok := false
	defer func() {
		if ok {
			c.put(cn)
		} else {
			c.discard(cn)
		}
	}()
	cn.c.SetDeadline(deadline)
	binary.LittleEndian.PutUint32(cn.hdr[:], first)
	binary.LittleEndian.PutUint32(cn.hdr[4:], count)
	if _, err := cn.c.Write(cn.hdr[:]); err != nil {
		return c.netErr("sending the request", err)
	}
	if _, err := io.ReadFull(cn.c, cn.hdr[:1]); err != nil {
		return c.netErr("waiting for the answer", err)
	}
	switch cn.hdr[0] {
	case statusOK:
		if _, err := io.ReadFull(cn.c, dst); err != nil {
			return c.netErr(fmt.Sprintf("receiving %d bytes", len(dst)), err)
		}
		ok = true
		return false, nil
	case statusError:
		if _, err := io.ReadFull(cn.c, cn.hdr[:2]); err != nil {
			return c.netErr("receiving the server's error", err)
		}
		msg := make([]byte, binary.LittleEndian.Uint16(cn.hdr[:]))
		if _, err := io.ReadFull(cn.c, msg); err != nil {
			return c.netErr("receiving the server's error", err)
		}
		ok = true // the answer was read whole: the connection is in step
		return false, &ServerError{Msg: string(msg)}
	}
	return false, fmt.Errorf("the server answered with status %d: not this protocol", cn.hdr[0])
}

// netErr classifies an error of the connection.
func (c *Client) netErr(what string, err error) (bool, error) {
	if c.isClosed() {
		return false, ErrClosed
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true, fmt.Errorf("%s: no answer within the %v timeout", what, c.timeout)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true, fmt.Errorf("%s: the server closed the connection", what)
	}
	return true, fmt.Errorf("%s: %w", what, err)
}

// get returns a connection, idle or new, waiting for a free one until deadline.
func (c *Client) get(deadline time.Time, fresh bool) (*conn, bool, error) {
	select {
	case c.slots <- struct{}{}:
	default:
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case c.slots <- struct{}{}:
		case <-c.done:
			return nil, false, ErrClosed
		case <-t.C:
			return nil, true, fmt.Errorf("no free connection within the %v timeout (%d busy)", c.timeout, cap(c.slots))
		}
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.slots
		return nil, false, ErrClosed
	}
	if n := len(c.idle); n > 0 && !fresh {
		cn := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		return cn, false, nil
	}
	c.mu.Unlock()
	cn, transient, err := c.connect(deadline)
	if err != nil {
		<-c.slots
	}
	return cn, transient, err
}

// connect dials the server, exchanges hello and greeting, and checks the greeting against the
// pinned image (pinning it on the first connection). The caller holds a slot.
func (c *Client) connect(deadline time.Time) (*conn, bool, error) {
	ctx, cancel := context.WithDeadline(c.ctx, deadline)
	defer cancel()
	nc, err := c.dialer.DialContext(ctx, "tcp", c.cfg.Addr)
	if err != nil {
		if c.isClosed() {
			return nil, false, ErrClosed
		}
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err // its message repeats the address
		}
		var se *os.SyscallError
		if errors.As(err, &se) {
			err = se.Err // "connect: connection refused" says connect twice
		}
		return nil, true, fmt.Errorf("dial: %w", err)
	}
	cn := &conn{c: nc}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		nc.Close()
		return nil, false, ErrClosed
	}
	c.live[cn] = struct{}{}
	c.mu.Unlock()
	g, transient, err := c.greet(cn, deadline)
	if err == nil {
		err = c.pin(g)
	}
	if err != nil {
		c.forget(cn)
		return nil, transient, err
	}
	return cn, false, nil
}

// greet sends the hello and reads the greeting.
func (c *Client) greet(cn *conn, deadline time.Time) (Greeting, bool, error) {
	cn.c.SetDeadline(deadline)
	if _, err := cn.c.Write(appendHello(nil)); err != nil {
		t, err := c.netErr("sending the hello", err)
		return Greeting{}, t, err
	}
	var b [greetingLen]byte
	n, err := io.ReadFull(cn.c, b[:])
	if n >= 4 && string(b[:4]) != magic {
		g, err := parseGreeting(b[:n])
		return g, false, err
	}
	if err != nil {
		t, err := c.netErr("waiting for the greeting", err)
		if n == 0 && t {
			err = fmt.Errorf("%w (is it a page server?)", err)
		}
		return Greeting{}, t, err
	}
	g, err := parseGreeting(b[:])
	return g, false, err
}

// pin records the image of the first greeting, or checks a later one against it.
func (c *Client) pin(g Greeting) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := &c.cfg
	if p.Token == 0 {
		p.Size, p.PageSize, p.Token = int64(g.Size), int64(g.PageSize), g.Token
		c.g = g
		return nil
	}
	if int64(g.Size) != p.Size || int64(g.PageSize) != p.PageSize {
		return fmt.Errorf("%w: %d bytes in pages of %d, pinned %d in pages of %d", ErrChanged, g.Size, g.PageSize, p.Size, p.PageSize)
	}
	if g.Token != p.Token {
		return fmt.Errorf("%w: token %x, pinned %x (a restarted or another server)", ErrChanged, g.Token, p.Token)
	}
	if c.g.Token == 0 {
		c.g = g
	}
	return nil
}

// put returns a healthy connection to the pool.
func (c *Client) put(cn *conn) {
	c.mu.Lock()
	if c.closed {
		delete(c.live, cn)
		cn.c.Close()
	} else {
		c.idle = append(c.idle, cn)
	}
	c.mu.Unlock()
	<-c.slots
}

// discard closes a connection that failed, or whose state is unknown, and frees its slot.
func (c *Client) discard(cn *conn) {
	c.forget(cn)
	<-c.slots
}

// forget closes a connection, keeping its slot.
func (c *Client) forget(cn *conn) {
	c.mu.Lock()
	delete(c.live, cn)
	c.mu.Unlock()
	cn.c.Close()
}

// dropIdle closes the idle connections.
func (c *Client) dropIdle() {
	c.mu.Lock()
	idle := c.idle
	c.idle = nil
	for _, cn := range idle {
		delete(c.live, cn)
		cn.c.Close()
	}
	c.mu.Unlock()
}

func (c *Client) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}
