package mirror

import (
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serverP keeps a P for the server of these tests, which is this program, while a goroutine
// waits in a fault; with one P, each fault would wait for the scheduler to preempt it.
func serverP(t *testing.T) {
	prev := runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
}

// servePages runs ServePages on a loopback listener; stop closes the listener and waits until
// ServePages has closed every connection and returned.
func servePages(t *testing.T, src io.ReaderAt, size int64) (addr string, stop func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ServePages(l, src, size) }()
	stopped := false
	return l.Addr().String(), func() {
		if stopped {
			return
		}
		stopped = true
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("ServePages after its listener closed: %v", err)
		}
	}
}

// checkBytes compares b with want byte by byte with plain loads: the server of these tests is
// this program, and a goroutine waiting in a fault at a plain load can be preempted, so the
// server's goroutines run (copy() or bytes.Equal, runtime assembly, could not be).
func checkBytes(t *testing.T, what string, b, want []byte) {
	t.Helper()
	for i := range b {
		if b[i] != want[i] {
			t.Fatalf("%s: byte %d is %d, want %d", what, i, b[i], want[i])
		}
	}
}

// failingServer prepares a test whose page server, this program, fails mid-run: it keeps a P
// for the server, skips where a failing source cannot poison pages, and checks at the end that
// nothing was left behind. It returns a source of n computed bytes (seed) and those bytes.
func failingServer(t *testing.T, seed uint64, n int) (computedSource, []byte) {
	t.Helper()
	serverP(t)
	needPoison(t)
	t.Cleanup(unchanged(t))
	return computed(seed, n)
}

// A region served from a page server over TCP: every byte through both views is the image's,
// bytes past its end (mid-page) are zeros, the faults are counted per view, Verify passes, and
// nothing is left behind, with and without fault-around.
func TestTCPSource(t *testing.T) {
	serverP(t)
	const n = 4 << 20
	src := computedSource{seed: 11, size: n - 3*4096 - 100}
	want := src.bytes(n)
	defer unchanged(t)()
	addr, stop := servePages(t, src, src.size)
	defer stop()
	for _, around := range []int{0, DefaultFaultAround} {
		r := shared(t, n)
		defer r.Close()
		p, err := Mirror(r, ServeFaults(TCPSource(addr, TCPOptions{})), FaultAround(around))
		if err != nil {
			t.Fatal(err)
		}
		if h := p.FaultHandler(); h != HandlerProcess {
			t.Errorf("served by %v, want a handler process", h)
		}
		half := n / 2
		checkBytes(t, "first half through the mirror", p.Mirror()[:half], want[:half])
		checkBytes(t, "second half through the original", p.Original()[half:], want[half:])
		checkBytes(t, "the original", p.Original(), want)
		checkBytes(t, "the mirror", p.Mirror(), want)
		o, m := p.FaultStats()
		if o.Missing == 0 || m.Missing == 0 || o.Filled+m.Filled != n/4096 {
			t.Errorf("around %d: stats original %+v, mirror %+v: want missing faults through both and %d pages filled", around, o, m, n/4096)
		}
		if around == 0 && o.Missing+m.Missing < n/4096 {
			t.Errorf("without fault-around: %d missing faults for %d pages", o.Missing+m.Missing, n/4096)
		}
		if err := p.FaultErr(); err != nil {
			t.Errorf("FaultErr: %v", err)
		}
		if err := p.Verify(); err != nil {
			t.Errorf("Verify: %v", err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		r.Close()
	}
	stop()
}

// The page server dies mid-run: the pages fetched before read as before, and a page fetched
// after fails loudly (SIGBUS), never zeros; FaultErr says so, naming the server.
func TestTCPSourceServerDies(t *testing.T) {
	const n = 64 * 4096
	cs, want := failingServer(t, 9, n)
	addr, stop := servePages(t, cs, n)
	defer stop()
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(TCPSource(addr, TCPOptions{Timeout: 500 * time.Millisecond, Retries: 1})), FaultAround(0))
	defer closePair()
	for off := 0; off < n/2; off += 4096 {
		if v, faulted := touchRecover(t, p.Mirror(), off+5); faulted || v != want[off+5] {
			t.Fatalf("page at %d while the server lives: %d (faulted %v), want %d", off, v, faulted, want[off+5])
		}
	}
	stop() // every connection closed, and nothing listens at addr any more
	for off := n / 2; off < n; off += 8 * 4096 {
		if v, faulted := touchRecover(t, p.Original(), off); !faulted {
			t.Fatalf("page at %d after the server died read %d: want SIGBUS", off, v)
		}
	}
	if v, faulted := touchRecover(t, p.Original(), 4096+5); faulted || v != want[4096+5] {
		t.Errorf("a page fetched before the server died: %d (faulted %v), want %d", v, faulted, want[4096+5])
	}
	err := p.FaultErr()
	if !errors.Is(err, ErrSourceFailed) || !strings.Contains(err.Error(), addr) {
		t.Errorf("FaultErr = %v, want ErrSourceFailed naming %s", err, addr)
	}
	t.Log(err)
}

// cuttingListener's connections, once cut is set, write half of what they are given and close:
// a page server whose connections break mid-answer.
type cuttingListener struct {
	net.Listener
	cut *atomic.Bool
}

func (l cuttingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return cuttingConn{c, l.cut}, nil
}

type cuttingConn struct {
	net.Conn
	cut *atomic.Bool
}

func (c cuttingConn) Write(p []byte) (int, error) {
	if !c.cut.Load() {
		return c.Conn.Write(p)
	}
	n, _ := c.Conn.Write(p[:len(p)/2])
	c.Conn.Close()
	return n, net.ErrClosed
}

// The server's connections break in the middle of its answers: the pages asked then fail
// loudly (SIGBUS), never zeros, and the pages served before read as before.
func TestTCPSourceConnectionsCut(t *testing.T) {
	const n = 32 * 4096
	cs, want := failingServer(t, 5, n)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var cut atomic.Bool
	done := make(chan error, 1)
	go func() { done <- ServePages(cuttingListener{l, &cut}, cs, n) }()
	defer func() { l.Close(); <-done }()
	r := shared(t, n)
	p, closePair := mirrored(t, r, ServeFaults(TCPSource(l.Addr().String(), TCPOptions{Timeout: time.Second, Retries: 2})), FaultAround(0))
	defer closePair()
	for off := 0; off < n/2; off += 4096 {
		if v, faulted := touchRecover(t, p.Original(), off+9); faulted || v != want[off+9] {
			t.Fatalf("page at %d before the cut: %d (faulted %v), want %d", off, v, faulted, want[off+9])
		}
	}
	cut.Store(true)
	for off := n / 2; off < n; off += 4 * 4096 {
		if v, faulted := touchRecover(t, p.Mirror(), off+9); !faulted {
			t.Fatalf("page at %d, its answer cut short, read %d: want SIGBUS", off, v)
		}
	}
	if v, faulted := touchRecover(t, p.Mirror(), 9); faulted || v != want[9] {
		t.Errorf("a page served before the cut: %d (faulted %v), want %d", v, faulted, want[9])
	}
	if err := p.FaultErr(); !errors.Is(err, ErrSourceFailed) {
		t.Errorf("FaultErr = %v, want ErrSourceFailed", err)
	}
}

// Bad addresses, absurd options, nothing listening and a server of another protocol are
// refused by Mirror, saying what is wrong, within a moment, and leave nothing behind.
func TestTCPSourceRefusals(t *testing.T) {
	const n = 4 * 4096
	r := shared(t, n)
	defer r.Close()
	defer unchanged(t)()
	addr, stop := servePages(t, computedSource{size: n}, n)
	defer stop()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := closed.Addr().String()
	closed.Close()
	hs := httptest.NewServer(computedHandler())
	defer hs.Close()
	quick := TCPOptions{Timeout: time.Second, Retries: 1}
	refuses(t, r, []refusal{
		{"empty address", TCPSource("", TCPOptions{}), ErrOption, "empty address"},
		{"no port", TCPSource("localhost", TCPOptions{}), ErrOption, "missing port"},
		{"URL", TCPSource("tcp://"+addr, TCPOptions{}), ErrOption, "is a URL"},
		{"port 0", TCPSource("127.0.0.1:0", TCPOptions{}), ErrOption, "not in 1-65535"},
		{"negative timeout", TCPSource(addr, TCPOptions{Timeout: -time.Second}), ErrOption, "negative"},
		{"retries", TCPSource(addr, TCPOptions{Retries: 1000}), ErrOption, "1000 retries"},
		{"connections", TCPSource(addr, TCPOptions{MaxConns: 1 << 20}), ErrOption, "connections"},
		{"nothing listens", TCPSource(nobody, quick), nil, "connection refused"},
		{"HTTP server", TCPSource(strings.TrimPrefix(hs.URL, "http://"), quick), nil, "not a page server"},
	})
}

// ServePages refuses what it cannot serve, closing the listener.
func TestServePagesRefusals(t *testing.T) {
	defer unchanged(t)()
	for _, c := range []struct {
		src  io.ReaderAt
		size int64
		want string
	}{
		{nil, 4096, "nil source"},
		{computedSource{}, -1, "negative size"},
		{computedSource{}, 1 << 62, "2^32 pages"},
	} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		err = ServePages(l, c.src, c.size)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ServePages(%v, %d): %v; want %q", c.src, c.size, err, c.want)
		}
		if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("the listener is open after a refusal: %v", err)
		}
	}
	if err := ServePages(nil, computedSource{}, 0); err == nil || !strings.Contains(err.Error(), "nil listener") {
		t.Errorf("ServePages(nil listener): %v", err)
	}
}
