package pagesrv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

var page = int64(os.Getpagesize())

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// noLeaks checks, once the test and the cleanups it registers later are done, that it left
// no descriptor, shared mapping or goroutine of this module behind.
func noLeaks(t *testing.T) {
	t.Helper()
	fds, gs := leakcheck.CheckShared(t), leakcheck.NoneLeft(t)
	t.Cleanup(func() {
		gs()
		fds()
	})
}

// serve runs Serve on a loopback listener; stop closes the listener and checks that Serve
// returned nil once every connection's goroutine ended.
func serve(t *testing.T, src io.ReaderAt, size int64) (addr string, stop func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(l, src, size) }()
	var once sync.Once
	return l.Addr().String(), func() {
		once.Do(func() {
			l.Close()
			if err := <-done; err != nil {
				t.Errorf("Serve after its listener closed: %v", err)
			}
		})
	}
}

// serveRandom serves size random bytes made from seed, and returns them with serve's results.
func serveRandom(t *testing.T, size int64, seed uint64) (img []byte, addr string, stop func()) {
	t.Helper()
	img = randBytes(int(size), seed)
	addr, stop = serve(t, bytes.NewReader(img), size)
	return img, addr, stop
}

func dial(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Every kind of read returns the image's bytes exactly, with io.ReaderAt's EOF rules, across
// requests split at the server's limit and a last page that is partial.
func TestReadBack(t *testing.T) {
	noLeaks(t)
	size := int64(maxAnswerBytes + 3*page + 1234)
	img, addr, stop := serveRandom(t, size, 1)
	defer stop()
	c := dial(t, Config{Addr: addr})
	defer c.Close()
	if c.Size() != size || c.PageSize() != page {
		t.Fatalf("greeting: %d bytes in pages of %d, want %d in pages of %d", c.Size(), c.PageSize(), size, page)
	}
	for _, tc := range []struct {
		off, n int64
	}{
		{0, page}, {3 * page, 5 * page}, {100, 5000}, {0, size}, {page - 1, 2}, {size - 10, 10},
		{size - page - 1234, page + 1234}, {maxAnswerBytes - page, 3 * page},
	} {
		got := make([]byte, tc.n)
		if n, err := c.ReadAt(got, tc.off); err != nil || int64(n) != tc.n {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", tc.n, tc.off, n, err)
		}
		if !bytes.Equal(got, img[tc.off:tc.off+tc.n]) {
			t.Fatalf("ReadAt(%d bytes at %d): wrong bytes", tc.n, tc.off)
		}
	}
	buf := make([]byte, 100)
	if n, err := c.ReadAt(buf, size-10); n != 10 || err != io.EOF || !bytes.Equal(buf[:10], img[size-10:]) {
		t.Errorf("read across the end: %d, %v; want 10, EOF and the last bytes", n, err)
	}
	if n, err := c.ReadAt(buf, size); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v; want 0, EOF", n, err)
	}
	if n, err := c.ReadAt(nil, 5); n != 0 || err != nil {
		t.Errorf("empty read: %d, %v", n, err)
	}
	if _, err := c.ReadAt(buf, -1); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("negative offset: %v", err)
	}
}

// Many goroutines reading at once through a pool of two connections all get their bytes.
func TestConcurrentReads(t *testing.T) {
	noLeaks(t)
	size := 256 * page
	img, addr, stop := serveRandom(t, size, 2)
	defer stop()
	c := dial(t, Config{Addr: addr, MaxConns: 2})
	defer c.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 3))
			for range 40 {
				off := r.Int64N(size)
				buf := make([]byte, r.Int64N(min(8*page, size-off))+1)
				if _, err := c.ReadAt(buf, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, img[off:off+int64(len(buf))]) {
					errs <- fmt.Errorf("%d bytes at %d: wrong bytes", len(buf), off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// failingReader fails for reads that reach bad, and reads img elsewhere.
type failingReader struct {
	img []byte
	bad int64
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.bad && off <= f.bad {
		return 0, errors.New("disk on fire")
	}
	return bytes.NewReader(f.img).ReadAt(p, off)
}

// A source that fails, or ends before the size served, makes the read fail with the server's
// reason, at once (no retry), never zeros; the connection stays usable.
func TestSourceFails(t *testing.T) {
	noLeaks(t)
	img := randBytes(int(16*page), 4)
	for _, tc := range []struct {
		name string
		src  io.ReaderAt
		size int64
		want string
	}{
		{"error", failingReader{img, 5 * page}, 16 * page, "disk on fire"},
		{"short", bytes.NewReader(img[:5*page+7]), 16 * page, "ends at byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, stop := serve(t, tc.src, tc.size)
			defer stop()
			c := dial(t, Config{Addr: addr})
			defer c.Close()
			_, err := c.ReadAt(make([]byte, page), 5*page)
			var e *Error
			var se *ServerError
			if !errors.As(err, &e) || !errors.As(err, &se) || e.Attempts != 1 || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReadAt of a page the source cannot give: %v; want a ServerError saying %q after 1 attempt", err, tc.want)
			}
			notEOF(t, err)
			t.Log(err)
			got := make([]byte, page)
			if _, err := c.ReadAt(got, page); err != nil || !bytes.Equal(got, img[page:2*page]) {
				t.Fatalf("a good read after the failure: %v", err)
			}
		})
	}
}

// A server that is gone fails reads after every retry; a server that restarted at the same
// address (another token) fails them with ErrChanged, and so does Dial with a pinned config.
func TestServerGoneOrChanged(t *testing.T) {
	noLeaks(t)
	size := 8 * page
	img, addr, stop := serveRandom(t, size, 5)
	c := dial(t, Config{Addr: addr, Retries: 2, Timeout: 2 * time.Second})
	defer c.Close()
	pinned := c.Config()
	if pinned.Token == 0 || pinned.Size != size || pinned.PageSize != page {
		t.Fatalf("Config() = %+v: the image is not pinned", pinned)
	}
	stop()
	_, err := c.ReadAt(make([]byte, page), 0)
	var e *Error
	if !errors.As(err, &e) || e.Attempts != 3 || errors.Is(err, ErrChanged) {
		t.Fatalf("read from a closed server: %v; want an *Error after 3 attempts", err)
	}
	notEOF(t, err)
	t.Log(err)

	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen at %s again: %v", addr, err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(l, bytes.NewReader(img), size) }()
	defer func() { l.Close(); <-done }()
	if _, err := c.ReadAt(make([]byte, page), 0); !errors.Is(err, ErrChanged) {
		t.Errorf("read from a restarted server: %v; want ErrChanged", err)
	}
	if c2, err := Dial(pinned); !errors.Is(err, ErrChanged) {
		if c2 != nil {
			c2.Close()
		}
		t.Errorf("Dial(pinned config) to a restarted server: %v; want ErrChanged", err)
	}
}

// notEOF fails t if the error of a read inside the image matches io.EOF: a fault handler
// would take it for the end of the source and fill the page with zeros.
func notEOF(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("the error of a failed read inside the image matches io.EOF: %v", err)
	}
}

// fakeServer accepts connections and runs fn on each, until the test ends.
func fakeServer(t *testing.T, fn func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { defer c.Close(); fn(c) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}

// greetThen answers the hello with a valid greeting, then runs fn.
func greetThen(g Greeting, fn func(net.Conn)) func(net.Conn) {
	return func(c net.Conn) {
		var hello [helloLen]byte
		if _, err := io.ReadFull(c, hello[:]); err != nil {
			return
		}
		c.Write(g.append(nil))
		fn(c)
	}
}

var goodGreeting = Greeting{Version: Version, PageSize: uint32(page), MaxPages: 16, Size: uint64(64 * page), Token: 42}

// Servers that break the protocol, or that stop answering, make Dial and ReadAt fail with
// what went wrong, within the timeout.
func TestBadServers(t *testing.T) {
	noLeaks(t)
	requested := make(chan struct{}, 8)
	stall := func(c net.Conn) {
		var req [requestLen]byte
		if _, err := io.ReadFull(c, req[:]); err == nil {
			requested <- struct{}{}
		}
		io.Copy(io.Discard, c) // never answers
	}
	badStatus := func(c net.Conn) {
		var req [requestLen]byte
		io.ReadFull(c, req[:])
		c.Write([]byte{7})
	}
	truncated := func(c net.Conn) {
		var req [requestLen]byte
		io.ReadFull(c, req[:])
		c.Write(append([]byte{statusOK}, make([]byte, page/2)...))
	}
	v2 := goodGreeting
	v2.Version = 2
	zeroPage := goodGreeting
	zeroPage.PageSize = 0
	hs := httptest.NewServer(http.NotFoundHandler())
	defer hs.Close()
	for _, tc := range []struct {
		name    string
		addr    string
		dialErr string // or, if empty, the error of a ReadAt
		readErr string
	}{
		{"http", strings.TrimPrefix(hs.URL, "http://"), "not a page server", ""},
		{"silent", fakeServer(t, func(c net.Conn) { io.Copy(io.Discard, c) }), "is it a page server", ""},
		{"version", fakeServer(t, greetThen(v2, func(net.Conn) {})), "protocol version 2", ""},
		{"page size", fakeServer(t, greetThen(zeroPage, func(net.Conn) {})), "page size of 0", ""},
		{"stalls", fakeServer(t, greetThen(goodGreeting, stall)), "", "no answer within"},
		{"status", fakeServer(t, greetThen(goodGreeting, badStatus)), "", "status 7"},
		{"truncated", fakeServer(t, greetThen(goodGreeting, truncated)), "", "closed the connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(Config{Addr: tc.addr, Timeout: 300 * time.Millisecond, Retries: 1})
			if tc.dialErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.dialErr) {
					if c != nil {
						c.Close()
					}
					t.Fatalf("Dial: %v; want an error saying %q", err, tc.dialErr)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, err = c.ReadAt(make([]byte, page), 0)
			if err == nil || !strings.Contains(err.Error(), tc.readErr) {
				t.Fatalf("ReadAt: %v; want an error saying %q", err, tc.readErr)
			}
			notEOF(t, err)
			t.Log(err)
		})
	}
	for len(requested) > 0 {
		<-requested
	}
}

// Close interrupts a read waiting for its answer; later reads fail with ErrClosed; a second
// Close returns nil.
func TestCloseInterrupts(t *testing.T) {
	noLeaks(t)
	requested := make(chan struct{}, 1)
	addr := fakeServer(t, greetThen(goodGreeting, func(c net.Conn) {
		var req [requestLen]byte
		if _, err := io.ReadFull(c, req[:]); err == nil {
			requested <- struct{}{}
		}
		io.Copy(io.Discard, c)
	}))
	c := dial(t, Config{Addr: addr})
	res := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, page), 0)
		res <- err
	}()
	<-requested
	c.Close()
	if err := <-res; !errors.Is(err, ErrClosed) {
		t.Errorf("read interrupted by Close: %v; want ErrClosed", err)
	}
	if _, err := c.ReadAt(make([]byte, page), 0); err != ErrClosed {
		t.Errorf("read after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// A client that asks for pages outside the image, or too many, gets an error answer and the
// server closes the connection; a malformed hello gets nothing.
func TestServerRefusesBadRequests(t *testing.T) {
	noLeaks(t)
	size := 4*page + 5
	addr, stop := serve(t, bytes.NewReader(make([]byte, size)), size)
	defer stop()
	for _, req := range [][2]uint32{{0, 0}, {4, 2}, {5, 1}, {0, 1 << 31}, {1<<32 - 1, 1}} {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		var g [greetingLen]byte
		nc.Write(appendHello(nil))
		if _, err := io.ReadFull(nc, g[:]); err != nil {
			t.Fatal(err)
		}
		var b [requestLen]byte
		binary.LittleEndian.PutUint32(b[:], req[0])
		binary.LittleEndian.PutUint32(b[4:], req[1])
		nc.Write(b[:])
		ans, _ := io.ReadAll(nc) // the server closes after the error
		if len(ans) < 3 || ans[0] != statusError || !strings.Contains(string(ans[3:]), "the image has 5 pages") {
			t.Errorf("request %v: answered %q", req, ans)
		}
		nc.Close()
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	nc.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if ans, _ := io.ReadAll(nc); len(ans) != 0 { // closed, or reset: the hello was not read whole
		t.Errorf("a malformed hello was answered %q", ans)
	}
}

// Serve refuses what it cannot serve, and closes the listener.
func TestServeRefusals(t *testing.T) {
	noLeaks(t)
	for _, tc := range []struct {
		src  io.ReaderAt
		size int64
		want string
	}{
		{nil, 1, "nil source"},
		{bytes.NewReader(nil), -1, "negative size"},
		{bytes.NewReader(nil), 1 << 62, "2^32 pages"},
	} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := Serve(l, tc.src, tc.size); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Serve(%v, %d): %v; want %q", tc.src, tc.size, err, tc.want)
		}
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("the listener is still open after a refusal: %v", err)
		}
	}
	if err := Serve(nil, bytes.NewReader(nil), 0); err == nil {
		t.Error("Serve(nil listener) succeeded")
	}
}

func TestConfig(t *testing.T) {
	good := Config{Addr: "localhost:9000", Timeout: time.Second, Retries: 2, MaxConns: 3, Size: 5, PageSize: 4096, Token: 7}
	b, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if back, err := Unmarshal(b); err != nil || back != good {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "empty address"},
		{Config{Addr: "localhost"}, "missing port"},
		{Config{Addr: "tcp://localhost:1"}, "is a URL"},
		{Config{Addr: "localhost:0"}, "not in 1-65535"},
		{Config{Addr: "localhost:70000"}, "not in 1-65535"},
		{Config{Addr: "a:1", Timeout: -1}, "negative"},
		{Config{Addr: "a:1", Retries: -1}, "retries"},
		{Config{Addr: "a:1", Retries: MaxRetries + 1}, "retries"},
		{Config{Addr: "a:1", MaxConns: 1 << 20}, "connections"},
		{Config{Addr: "a:1", Size: 5}, "only with its token"},
		{Config{Addr: "a:1", Token: 1, PageSize: 1000}, "not a valid image"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v; want %q", tc.cfg, err, tc.want)
		}
		if len(err.Error()) > 120 {
			t.Errorf("message of %d bytes: %v", len(err.Error()), err)
		}
	}
	for _, s := range []string{`{"addr":"a:1","retrys":2}`, `{"addr":"a:1"} {}`, `{"addr":"a:1","timeout":"1s"}`, `[]`} {
		if _, err := Unmarshal([]byte(s)); err == nil {
			t.Errorf("Unmarshal(%s) succeeded", s)
		}
	}
}

// A read of whole pages allocates nothing.
func TestReadAllocs(t *testing.T) {
	size := 64 * page
	addr, stop := serve(t, bytes.NewReader(make([]byte, size)), size)
	defer stop()
	c := dial(t, Config{Addr: addr})
	defer c.Close()
	buf := make([]byte, 4*page)
	if n := testing.AllocsPerRun(50, func() { c.ReadAt(buf, 8*page) }); n != 0 {
		t.Errorf("%v allocations per read of 4 pages", n)
	}
}

func BenchmarkReadAt(b *testing.B) {
	for _, pages := range []int64{1, 16, 512} {
		b.Run(fmt.Sprintf("pages=%d", pages), func(b *testing.B) {
			size := 1024 * page
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- Serve(l, bytes.NewReader(make([]byte, size)), size) }()
			defer func() { l.Close(); <-done }()
			c, err := Dial(Config{Addr: l.Addr().String()})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, pages*page)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := c.ReadAt(buf, int64(i)%(size/int64(len(buf)))*int64(len(buf))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func FuzzGreeting(f *testing.F) {
	f.Add(goodGreeting.append(nil))
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := parseGreeting(b)
		if err != nil {
			return
		}
		if e := g.append(nil); !bytes.Equal(e[:6], b[:6]) || !bytes.Equal(e[8:], b[8:]) {
			t.Fatalf("greeting %x decodes to %+v, which encodes differently", b, g)
		}
	})
}

func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte(`{"addr":"localhost:9000","timeout":1000,"retries":2,"max_conns":3,"size":5,"page_size":4096,"token":7}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Unmarshal(b)
		if err != nil {
			return
		}
		m, err := c.Marshal()
		if err != nil {
			t.Fatalf("%+v unmarshalled but does not marshal: %v", c, err)
		}
		if back, err := Unmarshal(m); err != nil || back != c {
			t.Fatalf("round trip of %+v: %+v, %v", c, back, err)
		}
	})
}
