package httpsrc

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDirectOnlyForPlainHTTP: plain-HTTP URLs are read on the Source's own connections,
// HTTPS ones through the Transport.
func TestDirectOnlyForPlainHTTP(t *testing.T) {
	o := newObject(4*page, 30)
	s := open(t, startServer(t, o.serveContent), Config{})
	if s.direct == nil {
		t.Fatal("a plain-HTTP source does not use its own connections")
	}
	tls := startTLS(t, o.serveContent)
	ts, err := newSource(Config{URL: tls.URL}, tls.Client().Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	if ts.direct != nil {
		t.Fatal("an HTTPS source bypasses the Transport")
	}
}

// TestStaleConnection: a pooled connection that the server closed while it was idle costs the
// next request nothing but a new connection: the request itself succeeds (it is not left to
// ReadAt's retries, with their backoff).
func TestStaleConnection(t *testing.T) {
	o := newObject(8*page, 31)
	srv := startServer(t, o.serveContent)
	s := open(t, srv, Config{})
	for i := range 4 {
		srv.CloseClientConnections()
		resp, err := s.roundTrip(s.request(context.Background(), int64(i)*page, int64(i+1)*page-1, s.cond))
		if err != nil {
			t.Fatalf("request %d on a connection the server closed: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, o.data[i*page:(i+1)*page]) {
			t.Fatalf("request %d: %d, %d bytes, %v", i, resp.StatusCode, len(b), err)
		}
	}
	if r, c := srv.requests.Load(), srv.conns.Load(); r != 4 || c != 5 {
		t.Fatalf("%d requests on %d connections, want 4 on 5 (the probe's, then one per request)", r, c)
	}
}

// rawServer answers each request on a connection with answer(i, w), i counting the requests
// of every connection; it counts the connections accepted.
type rawServer struct {
	url   string
	conns atomic.Int64
	reqs  atomic.Int64
}

func startRaw(t *testing.T, answer func(i int64, r *http.Request, w io.Writer) (keep bool)) *rawServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rs := &rawServer{url: "http://" + ln.Addr().String() + "/object"}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rs.conns.Add(1)
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					r, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if !answer(rs.reqs.Add(1)-1, r, c) {
						return
					}
				}
			})
		}
	})
	return rs
}

// partial writes a 206 answer with bytes a-b of data, then extra, in one write.
func partial(w io.Writer, data []byte, r *http.Request, header, extra string) {
	a, b, _ := parseRangeHeader(r.Header.Get("Range"))
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n%s\r\n", a, b, len(data), b-a+1, header)
	buf.Write(data[a : b+1])
	buf.WriteString(extra)
	w.Write(buf.Bytes())
}

// TestDirectConnectionReuse: a connection is reused only after an answer that leaves it in a
// known state: not after "Connection: close", nor after bytes past the body's end (which
// would be read as the next answer).
func TestDirectConnectionReuse(t *testing.T) {
	data := randBytes(8*page, 32)
	for _, tc := range []struct {
		name   string
		header string
		extra  string
		conns  int64 // for the probe and 4 reads
	}{
		{"KeepAlive", "", "", 1},
		{"ConnectionClose", "Connection: close\r\n", "", 5},
		{"BytesAfterBody", "", "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/1\r\nContent-Length: 1\r\n\r\nX", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := startRaw(t, func(i int64, r *http.Request, w io.Writer) bool {
				partial(w, data, r, tc.header, tc.extra)
				return !strings.Contains(tc.header, "close")
			})
			s, err := New(Config{URL: rs.url, Retries: 0})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i := range 4 {
				checkRead(t, s, data, int64(i)*page, page)
			}
			if c := rs.conns.Load(); c != tc.conns {
				t.Fatalf("%d connections for the probe and 4 reads, want %d", c, tc.conns)
			}
		})
	}
}

// TestDirectWholeObjectNotDrained: a server that answers a range with the whole object (200)
// fails the read at once; the Source closes the connection rather than read the object.
func TestDirectWholeObjectNotDrained(t *testing.T) {
	data := randBytes(8*page, 33)
	big := make([]byte, 64<<20)
	var sent atomic.Int64
	rs := startRaw(t, func(i int64, r *http.Request, w io.Writer) bool {
		if i != 1 { // the probe and the second read
			partial(w, data, r, "", "")
			return true
		}
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(big))
		for off := 0; off < len(big); off += 1 << 20 {
			n, err := w.Write(big[off : off+1<<20])
			sent.Add(int64(n))
			if err != nil {
				return false
			}
		}
		return true
	})
	s, err := New(Config{URL: rs.url, Retries: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.ReadAt(make([]byte, page), 0); err == nil || !strings.Contains(err.Error(), "200 OK") {
		t.Fatalf("ReadAt = %v; want the 200 refused", err)
	}
	checkRead(t, s, data, page, page) // a new connection: the server's first is still sending
	if n := sent.Load(); n >= int64(len(big)) {
		t.Fatalf("the whole object (%d bytes) was read", n)
	}
}

// TestQuiet: an idle connection with bytes to read, or whose server closed it, is not reused;
// one with nothing to read is.
func TestQuiet(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	// readable waits until the client has something to read: bytes, or the end.
	readable := func() {
		raw, err := client.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		raw.Control(func(fd uintptr) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			for {
				if _, err := unix.Poll(pfd, -1); err != unix.EINTR {
					return
				}
			}
		})
	}
	if !quiet(client) {
		t.Fatal("a connection with nothing to read is not quiet")
	}
	server.Write([]byte("HTTP/1.1 200 OK\r\n"))
	readable()
	if quiet(client) {
		t.Fatal("a connection with bytes to read is quiet")
	}
	buf := make([]byte, 64)
	if n, err := client.Read(buf); err != nil || n != 17 {
		t.Fatalf("read %d, %v", n, err)
	}
	if !quiet(client) {
		t.Fatal("a connection read to its end is not quiet")
	}
	server.Close()
	readable()
	if quiet(client) {
		t.Fatal("a connection the server closed is quiet")
	}
}

// TestClosedAfterRequest: a server that closes a reused connection after reading a request,
// without answering (an idle timeout racing the request), costs a new connection, not a failed
// request.
func TestClosedAfterRequest(t *testing.T) {
	data := randBytes(8*page, 34)
	rs := startRaw(t, func(i int64, r *http.Request, w io.Writer) bool {
		if i == 1 { // the first request after the probe, on the probe's connection
			return false
		}
		partial(w, data, r, "", "")
		return true
	})
	s, err := New(Config{URL: rs.url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := s.roundTrip(s.request(context.Background(), page, 2*page-1, s.cond))
	if err != nil {
		t.Fatalf("request on a connection closed under it: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(b, data[page:2*page]) {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
	if r, c := rs.reqs.Load(), rs.conns.Load(); r != 3 || c != 2 {
		t.Fatalf("%d requests on %d connections, want 3 on 2", r, c)
	}
}

// TestDirectEndlessHeader: a server that sends an answer's header without end fails the read
// once a megabyte of it has come, not when the attempt times out or memory runs out.
func TestDirectEndlessHeader(t *testing.T) {
	data := randBytes(8*page, 35)
	var sent atomic.Int64
	rs := startRaw(t, func(i int64, r *http.Request, w io.Writer) bool {
		if i == 0 {
			partial(w, data, r, "", "")
			return true
		}
		io.WriteString(w, "HTTP/1.1 206 Partial Content\r\n")
		line := []byte("X-Filler: " + strings.Repeat("x", 4000) + "\r\n")
		for sent.Load() < 64<<20 {
			n, err := w.Write(line)
			sent.Add(int64(n))
			if err != nil {
				return false
			}
		}
		return false
	})
	s, err := New(Config{URL: rs.url, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.ReadAt(make([]byte, page), 0)
	if err == nil || !strings.Contains(err.Error(), "header is over 1 MiB") {
		t.Fatalf("ReadAt = %v; want the header refused", err)
	}
	if n := sent.Load(); n >= 64<<20 {
		t.Fatalf("the server sent its whole %d-byte header", n)
	}
}

// TestDirectAbsurdMaxConns: a MaxConns far past what a process can open makes a Source that
// reads, without memory in proportion.
func TestDirectAbsurdMaxConns(t *testing.T) {
	o := newObject(4*page, 36)
	s := open(t, startServer(t, o.serveContent), Config{MaxConns: 1 << 40})
	if c := cap(s.direct.slots); c != maxDirectConns {
		t.Fatalf("the pool holds %d slots", c)
	}
	checkRead(t, s, o.data, page, page)
}
