package httpsrc

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A plain-HTTP request is made on the Source's own connections, by the goroutine that asks:
// it writes the request and reads the answer itself, with the standard library's request
// writer and response parser. http.Transport hands every request between three goroutines
// (the caller's, and a writer and a reader per connection), and on a small virtual machine
// those hand-offs cost more CPU than the request: 150–170 µs of the client's CPU per 4 KiB
// read over loopback, from a server in another process, through the Transport, and 85–100 µs
// this way (BenchmarkReadAtServerProcess). BenchmarkReadAt's -transport rows run both against
// a server in the test process, whose own hand-offs make the two cost about the same there. A fault handler that
// prefetches while it serves faults spends that CPU on the same cores as the faults it serves.
//
// HTTPS, and a URL that the environment sends through a proxy, go through the Transport.

// directPool is the connections of one Source to one plain-HTTP server: at most cap(slots)
// open, the idle ones in idle.
type directPool struct {
	addr  string // host:port
	dial  func(ctx context.Context, network, addr string) (net.Conn, error)
	idle  chan *directConn
	slots chan struct{} // one per connection open
}

// directConn is a connection and its buffers.
type directConn struct {
	c     net.Conn
	br    *bufio.Reader // reads lim
	lim   capReader     // the connection, capped while an answer's header is read
	bw    *bufio.Writer
	since time.Time // idle since
}

// directIdle: a connection idle this long may have been closed by the server; it is not used.
const directIdle = 90 * time.Second

// maxDirectConns caps a pool's connections whatever MaxConns says: the pool's bookkeeping
// takes memory in proportion (an absurd MaxConns must not), and a process runs out of
// descriptors long before.
const maxDirectConns = 4096

func newDirectPool(addr string, maxConns int, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *directPool {
	maxConns = min(maxConns, maxDirectConns)
	return &directPool{addr: addr, dial: dial, idle: make(chan *directConn, maxConns), slots: make(chan struct{}, maxConns)}
}

// get returns an idle connection (reused) or a new one, waiting while cap(slots) are open.
func (p *directPool) get(ctx context.Context) (c *directConn, reused bool, err error) {
	for {
		var ok bool
		select {
		case c = <-p.idle:
			ok = true
		default:
			select {
			case c = <-p.idle:
				ok = true
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
		if !ok {
			c, err := p.open(ctx)
			return c, false, err
		}
		if time.Since(c.since) < directIdle && quiet(c.c) {
			return c, true, nil
		}
		p.drop(c)
	}
}

// quiet reports whether an idle connection has nothing to read: no bytes that the server
// sent after its last answer (they would be read as the next answer) and no end (the server
// closed it). It peeks without blocking (MSG_PEEK, MSG_DONTWAIT); a connection it cannot
// check counts as quiet.
func quiet(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	ok = true
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = err == unix.EAGAIN
		return true
	})
	return ok
}

// open dials a connection in a slot taken.
func (p *directPool) open(ctx context.Context) (*directConn, error) {
	nc, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		<-p.slots
		return nil, err
	}
	c := &directConn{c: nc, bw: bufio.NewWriterSize(nc, 4<<10)}
	c.lim.r = nc
	c.br = bufio.NewReaderSize(&c.lim, 32<<10)
	return c, nil
}

// maxHeader caps the bytes of an answer's status line and header, as the Transport caps
// them: a server that sends an endless header fails the request instead of filling memory.
const maxHeader = 1 << 20

// capReader reads from r while left > 0 (a negative left: no cap).
type capReader struct {
	r    io.Reader
	left int64
}

var errLongHeader = errors.New("the answer's header is over 1 MiB")

func (l *capReader) Read(p []byte) (int, error) {
	if l.left == 0 {
		return 0, errLongHeader
	}
	if l.left > 0 && int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	if l.left > 0 {
		l.left -= int64(n)
	}
	return n, err
}

// put returns a connection whose answer was read to its end.
func (p *directPool) put(c *directConn) {
	c.since = time.Now()
	p.idle <- c // never blocks: a slot is held per connection
}

// drop closes a connection and frees its slot.
func (p *directPool) drop(c *directConn) {
	c.c.Close()
	<-p.slots
}

// closeIdle closes the idle connections.
func (p *directPool) closeIdle() {
	for {
		select {
		case c := <-p.idle:
			p.drop(c)
		default:
			return
		}
	}
}

// roundTrip sends req on a connection of the pool and reads the answer's header; the body
// returned gives the connection back once read to its end and closed. req's context bounds
// the whole exchange, body included: when it is done, the connection's reads and writes fail
// and the connection is closed. An idle connection is reused only if it has nothing to read
// (see quiet); one that the server closed just as the request went out fails before any byte
// of an answer, and the request is made again once on a new one.
func (p *directPool) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	for try := 0; ; try++ {
		c, reused, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := p.exchange(ctx, c, req)
		if err == nil {
			return resp, nil
		}
		if !reused || try > 0 || ctx.Err() != nil || !staleConn(err) {
			return nil, err
		}
	}
}

// exchange writes req on c and reads the answer's header. On an error, c is dropped.
func (p *directPool) exchange(ctx context.Context, c *directConn, req *http.Request) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { c.c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		p.drop(c)
		return nil, err
	}
	if err := req.Write(c.bw); err != nil {
		return fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		return fail(err)
	}
	// The first byte alone, to tell a connection closed before any answer (io.EOF: the
	// parser would say io.ErrUnexpectedEOF) from an answer cut short.
	c.lim.left = maxHeader
	if _, err := c.br.Peek(1); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(c.br, req)
	if err != nil {
		return fail(err)
	}
	c.lim.left = -1 // the body: Content-Length or the chunks bound it
	resp.Body = &directBody{rc: resp.Body, p: p, c: c, stop: stop, keep: !resp.Close, eof: resp.ContentLength == 0}
	return resp, nil
}

// staleConn reports whether err is what a request on a connection that the server closed
// while it was idle meets before any byte of the answer.
func staleConn(err error) bool {
	return err == io.EOF || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// directBody is an answer's body on a pooled connection.
type directBody struct {
	rc   io.ReadCloser
	p    *directPool
	c    *directConn
	stop func() bool // the context's AfterFunc
	keep bool        // the answer lets the connection be reused
	eof  bool        // read to its end, with no error before
	bad  bool        // a read failed: the connection is in an unknown state
	done bool
}

func (b *directBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("httpsrc: read after Close")
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.eof = !b.bad // a body that failed reports io.EOF to the reads after
	case err != nil:
		b.bad = true
	}
	return n, err
}

// Close gives the connection back if the body was read to its end, with nothing after it,
// and the context did not end the exchange; else closes it. A body not read to its end is
// not drained (it may be a whole object sent instead of a range).
func (b *directBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	live := b.stop() // false: the context ended, and the deadline is (being) set
	if b.eof && b.keep && live && b.c.br.Buffered() == 0 {
		b.rc.Close()
		b.p.put(b.c)
		return nil
	}
	b.p.drop(b.c)
	return nil
}
