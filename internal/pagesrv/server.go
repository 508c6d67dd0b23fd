package pagesrv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Timeouts of the server side of a connection.
const (
	// helloTimeout bounds the wait for a new connection's hello.
	helloTimeout = 10 * time.Second
	// writeTimeout bounds the writing of one answer: a client that stops reading (its host
	// gone without a word) does not hold a goroutine for ever.
	writeTimeout = 2 * time.Minute
)

// Serve serves the first size bytes of src, in pages of os.Getpagesize() bytes, to the
// clients that connect to l, until l is closed or its Accept fails for good. It then closes
// every connection it accepted and returns once their goroutines have ended: nil if l was
// closed, else the Accept error. Serve owns l: it closes it before returning, also when its
// arguments are refused. Accept errors that pass (out of file descriptors) are retried.
//
// Each connection is served by one goroutine, one src.ReadAt per request: src must be safe for
// concurrent use, as io.ReaderAt's contract says. A read that fails, or that ends before size
// bytes, is answered with an error, never with zeros; the bytes of the last page past size are
// zeros.
func Serve(l net.Listener, src io.ReaderAt, size int64) error {
	if l == nil {
		return errors.New("pagesrv: Serve: nil listener")
	}
	page := int64(os.Getpagesize())
	g := Greeting{Version: Version, PageSize: uint32(page), MaxPages: uint32(max(1, maxAnswerBytes/page)), Size: uint64(size)}
	var err error
	switch {
	case src == nil:
		err = errors.New("pagesrv: Serve: nil source")
	case size < 0:
		err = fmt.Errorf("pagesrv: Serve: negative size %d", size)
	case g.Pages() > maxPagesIndex:
		err = fmt.Errorf("pagesrv: Serve: %d bytes is more than 2^32 pages of %d bytes", size, page)
	}
	if err != nil {
		l.Close()
		return err
	}
	for g.Token == 0 {
		g.Token = rand.Uint64()
	}
	s := &server{src: src, g: g, greeting: g.append(nil), conns: map[net.Conn]struct{}{}}
	return s.acceptLoop(l)
}

// server is one Serve call.
type server struct {
	src      io.ReaderAt
	g        Greeting
	greeting []byte

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (s *server) acceptLoop(l net.Listener) error {
	defer l.Close()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if passing(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			s.closeAll()
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("pagesrv: Serve: accept: %w", err)
		}
		backoff = 0
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// passing reports whether an Accept error is worth retrying: the process or the system ran
// out of something that may come back.
func passing(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// closeAll closes every connection and waits for their goroutines.
func (s *server) closeAll() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *server) serveConn(c net.Conn) {
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	c.SetDeadline(time.Now().Add(helloTimeout))
	var hello [helloLen]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return
	}
	v, err := parseHello(hello[:])
	if err != nil {
		return // not a page client: nothing it would understand to say
	}
	if _, err := c.Write(s.greeting); err != nil || v != Version {
		return // a client of another version learns ours from the greeting
	}
	c.SetDeadline(time.Time{})
	page := uint64(s.g.PageSize)
	var req [requestLen]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		first, count := binary.LittleEndian.Uint32(req[:]), binary.LittleEndian.Uint32(req[4:])
		if count == 0 || count > s.g.MaxPages || uint64(first)+uint64(count) > s.g.Pages() {
			s.answerError(c, fmt.Sprintf("request for %d pages at page %d: the image has %d pages of %d bytes, and a request at most %d",
				count, first, s.g.Pages(), page, s.g.MaxPages))
			return
		}
		need := 1 + int(uint64(count)*page)
		if cap(buf) < need {
			buf = make([]byte, need)
		}
		buf = buf[:need]
		buf[0] = statusOK
		if msg := s.read(buf[1:], int64(uint64(first)*page)); msg != "" {
			if !s.answerError(c, msg) {
				return
			}
			continue
		}
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// read fills p, whole pages, from the source at off; it returns why it could not.
func (s *server) read(p []byte, off int64) string {
	want := min(int64(len(p)), int64(s.g.Size)-off)
	n, err := s.src.ReadAt(p[:want], off)
	if int64(n) < want {
		end := off + want - 1
		switch {
		case errors.Is(err, io.EOF):
			return fmt.Sprintf("the server's source ends at byte %d of the %d it serves", off+int64(n), s.g.Size)
		case err == nil:
			return fmt.Sprintf("the server's source returned %d of bytes %d-%d and no error", n, off, end)
		}
		return fmt.Sprintf("the server's source failed at bytes %d-%d: %v", off, end, err)
	}
	clear(p[want:])
	return ""
}

// answerError sends an error answer; it reports whether the connection is still usable.
func (s *server) answerError(c net.Conn, msg string) bool {
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	b := make([]byte, 0, 3+len(msg))
	b = append(b, statusError)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.Write(b)
	return err == nil
}
