package migrate

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// PageSource fetches pages of a source image on demand: the destination's faults end here.
// Implementations must be safe for concurrent use.
type PageSource interface {
	// ReadPages fills dst, a whole number of pages, with the image's bytes at offset off. It
	// fills all of dst or returns an error: never a short or zeroed page.
	ReadPages(dst []byte, off int64) error
	Close() error
}

// socketSource is the demand connection to a migration source: requests of (first page,
// count), answered with the pages in order.
type socketSource struct {
	mu       sync.Mutex
	conn     net.Conn
	r        *bufio.Reader
	pageSize int
}

// DialSource opens a demand connection to a migration source listening at addr.
func DialSource(addr string, pageSize int) (PageSource, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("migrate: dial source %s: %w", addr, err)
	}
	if _, err := conn.Write([]byte{connDemand}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("migrate: source %s: %w", addr, err)
	}
	return &socketSource{conn: conn, r: bufio.NewReaderSize(conn, 256<<10), pageSize: pageSize}, nil
}

func (s *socketSource) ReadPages(dst []byte, off int64) error {
	if len(dst)%s.pageSize != 0 || off%int64(s.pageSize) != 0 {
		return fmt.Errorf("migrate: ReadPages(%d bytes at %d): not whole pages of %d bytes", len(dst), off, s.pageSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// A source that stops answering without closing the connection fails the fetch rather
	// than leaving the fault it serves waiting for ever.
	s.conn.SetDeadline(time.Now().Add(demandTimeout))
	if err := putU32(s.conn, uint32(off/int64(s.pageSize)), uint32(len(dst)/s.pageSize)); err != nil {
		return sourceGone("demand request", err)
	}
	if _, err := io.ReadFull(s.r, dst); err != nil {
		return sourceGone("demand answer", err)
	}
	return nil
}

func (s *socketSource) Close() error { return s.conn.Close() }

// httpSource reads pages with HTTP range requests.
type httpSource struct {
	url    string
	client *http.Client
}

// HTTPSource returns a PageSource that fetches pages with HTTP Range requests (RFC 9110) from
// url: any HTTP server or object store that serves byte ranges of the image, such as Go's
// http.ServeContent or an S3-compatible store. A nil client means http.DefaultClient. A
// server that ignores the range (200 instead of 206) or answers another range is an error.
func HTTPSource(url string, client *http.Client) PageSource {
	if client == nil {
		client = http.DefaultClient
	}
	return &httpSource{url: url, client: client}
}

func (h *httpSource) ReadPages(dst []byte, off int64) error {
	if len(dst) == 0 {
		return nil
	}
	req, err := http.NewRequest(http.MethodGet, h.url, nil)
	if err != nil {
		return fmt.Errorf("migrate: HTTP source: %w", err)
	}
	last := off + int64(len(dst)) - 1
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, last))
	resp, err := h.client.Do(req)
	if err != nil {
		return sourceGone("HTTP range request", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return fmt.Errorf("migrate: HTTP source %s: bytes %d-%d: status %q, want 206 Partial Content (the server must support Range requests, and the image must cover the range)", h.url, off, last, resp.Status)
	}
	// Content-Range: bytes first-last/total
	cr := resp.Header.Get("Content-Range")
	var first, end int64
	if rest, ok := strings.CutPrefix(cr, "bytes "); ok {
		if a, b, ok := strings.Cut(rest, "-"); ok {
			first, _ = strconv.ParseInt(a, 10, 64)
			b, _, _ = strings.Cut(b, "/")
			end, _ = strconv.ParseInt(b, 10, 64)
		}
	}
	if first != off || end != last {
		return fmt.Errorf("migrate: HTTP source %s: asked for bytes %d-%d, got Content-Range %q", h.url, off, last, cr)
	}
	if _, err := io.ReadFull(resp.Body, dst); err != nil {
		return sourceGone("HTTP range body", err)
	}
	return nil
}

func (h *httpSource) Close() error {
	h.client.CloseIdleConnections()
	return nil
}
