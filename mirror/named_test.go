package mirror

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
)

// computedSource is a source that is Go code: each 8 bytes are a hash of their index and a seed. Its length is
// fixed: reads past it end with io.EOF.
type computedSource struct {
	seed uint64
	size int64
}

// computed returns the computed source of seed and size, and its bytes.
func computed[N int | int64](seed uint64, size N) (computedSource, []byte) {
	c := computedSource{seed: seed, size: int64(size)}
	return c, c.bytes(int(size))
}

// bytes returns the first n bytes the source reads (zeros past its end).
func (c computedSource) bytes(n int) []byte {
	b := make([]byte, n)
	c.ReadAt(b, 0)
	return b
}

func (c computedSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.size {
		return 0, io.EOF
	}
	n := len(p)
	if rem := c.size - off; int64(n) > rem {
		n = int(rem)
	}
	for i := 0; i < n; {
		pos := off + int64(i)
		x := (uint64(pos/8)*0x9e3779b97f4a7c15 ^ c.seed) * 0xbf58476d1ce4e5b9
		for b := pos % 8; b < 8 && i < n; b++ {
			p[i] = byte(x >> (8 * b))
			i++
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// computedConfig is the configuration of the registered computed source: seed, size, and
// whether the constructor should fail.
func computedConfig(seed uint64, size int64, fail bool) []byte {
	b := binary.LittleEndian.AppendUint64(nil, seed)
	b = binary.LittleEndian.AppendUint64(b, uint64(size))
	if fail {
		b = append(b, 1)
	}
	return b
}

const computedName = "mirrormem-test/computed"

func init() {
	RegisterSource(computedName, func(config []byte) (io.ReaderAt, error) {
		if len(config) < 16 {
			return nil, fmt.Errorf("computed source: config of %d bytes, want 16", len(config))
		}
		if len(config) > 16 {
			return nil, errors.New("computed source: told to fail")
		}
		return computedSource{seed: binary.LittleEndian.Uint64(config), size: int64(binary.LittleEndian.Uint64(config[8:]))}, nil
	})
}

// A source that is Go code, registered in init, is served by a handler process in either
// build: every byte through both views is the source's, first touched with copy(); the faults
// are counted per view; Verify passes; bytes past the source's end read as zeros.
func TestNamedSource(t *testing.T) {
	const n = 4 << 20
	src := computedSource{seed: 42, size: n - 3*4096 - 100}
	want := src.bytes(n)
	defer unchanged(t)()
	for _, around := range []int{0, DefaultFaultAround} {
		r := shared(t, n)
		defer r.Close()
		p, err := Mirror(r, ServeFaults(NamedSource(computedName, computedConfig(src.seed, src.size, false))), FaultAround(around))
		if err != nil {
			t.Fatal(err)
		}
		if h := p.FaultHandler(); h != HandlerProcess {
			t.Errorf("served by %v, want a handler process", h)
		}
		got := make([]byte, n)
		half := n / 2
		copy(got[:half], p.Mirror()[:half])
		copy(got[half:], p.Original()[half:])
		if !bytes.Equal(got, want) {
			t.Fatalf("around %d: the views differ from the source", around)
		}
		if !bytes.Equal(p.Original(), p.Mirror()) {
			t.Fatal("the views differ from each other")
		}
		o, m := p.FaultStats()
		if o.Missing == 0 || m.Missing == 0 || o.Filled+m.Filled != n/4096 {
			t.Errorf("around %d: stats original %+v, mirror %+v: want missing faults through both and %d pages filled", around, o, m, n/4096)
		}
		if err := p.Verify(); err != nil {
			t.Errorf("Verify: %v", err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		r.Close()
	}
}

var lateOnce sync.Once // a name registers once per process, whatever -count says

// A name nobody registered, a registration made after initialisation, a constructor that fails
// and a plain Go value are refused by Mirror with what to do, and leave nothing behind.
func TestNamedSourceRefusals(t *testing.T) {
	const n = 4 * 4096
	r := shared(t, n)
	defer r.Close()
	lateOnce.Do(func() {
		RegisterSource("mirrormem-test/late", func([]byte) (io.ReaderAt, error) { return computedSource{size: n}, nil })
	})
	defer unchanged(t)()
	refuses(t, r, []refusal{
		{"unregistered", NamedSource("mirrormem-test/nobody", nil), ErrOption, "no source is registered"},
		{"late", NamedSource("mirrormem-test/late", nil), ErrOption, "init function"},
		{"constructor fails", NamedSource(computedName, computedConfig(1, n, true)), nil, "told to fail"},
		{"config too large", NamedSource(computedName, make([]byte, 65<<10)), ErrOption, "at most"},
		{"plain Go value", computedSource{size: n}, ErrGoSource, "RegisterSource"},
	})
}

// The HTTP server dies mid-run: the pages fetched before read as before, and a page fetched
// after fails loudly (SIGBUS), never zeros; FaultErr says so.
func TestHTTPSourceServerDies(t *testing.T) {
	needPoison(t)
	const n = 64 * 4096
	defer unchanged(t)()
	srv := httptest.NewServer(computedHandler())
	defer srv.Close()
	cs, want := computed(9, n)
	r := shared(t, n)
	defer r.Close()
	src := HTTPSource(fmt.Sprintf("%s/computed/%d/%d", srv.URL, cs.seed, cs.size), HTTPOptions{Timeout: 200 * time.Millisecond, Retries: 1})
	p, err := Mirror(r, ServeFaults(src), FaultAround(0))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for off := 0; off < n/2; off += 4096 {
		if v, faulted := touchRecover(t, p.Mirror(), off+5); faulted || v != want[off+5] {
			t.Fatalf("page at %d while the server lives: %d (faulted %v), want %d", off, v, faulted, want[off+5])
		}
	}
	srv.CloseClientConnections()
	srv.Close()
	for off := n / 2; off < n; off += 8 * 4096 {
		if v, faulted := touchRecover(t, p.Original(), off); !faulted {
			t.Fatalf("page at %d after the server died read %d: want SIGBUS", off, v)
		}
	}
	if v, faulted := touchRecover(t, p.Original(), 4096+5); faulted || v != want[4096+5] {
		t.Errorf("a page fetched before the server died: %d (faulted %v), want %d", v, faulted, want[4096+5])
	}
	if err := p.FaultErr(); !errors.Is(err, ErrSourceFailed) {
		t.Errorf("FaultErr = %v, want ErrSourceFailed", err)
	}
}

// A source's configuration (an HTTP header with a credential, say) reaches the handler
// process through a descriptor, never through its environment, which /proc/PID/environ shows
// for the life of the process.
func TestHandlerProcessEnvironHoldsNoConfig(t *testing.T) {
	const n = 16 * 4096
	srv := httptest.NewServer(computedHandler())
	defer srv.Close()
	r := shared(t, n)
	defer r.Close()
	const secret = "Bearer s3cr3t-t0ken-in-a-header"
	src := HTTPSource(srv.URL+"/computed/5/65536", HTTPOptions{Header: map[string]string{"Authorization": secret}})
	p, err := Mirror(r, ServeFaults(src), WithHandler(HandlerProcess))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	loopSum(p.Original())
	pids := p.FaultHandlerPids()
	if len(pids) == 0 {
		t.Fatal("no handler process")
	}
	for _, pid := range pids {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		// The configuration travelled as JSON, its source config in base64: look for both.
		for _, leak := range []string{secret, "SourceConfig", "s3cr3t", "computed/5", base64.StdEncoding.EncodeToString([]byte(secret))[:20]} {
			if bytes.Contains(env, []byte(leak)) {
				t.Errorf("handler process %d: its environment holds %q", pid, leak)
			}
		}
	}
}

// A server that drops every connection after the version probe: the client sees a
// connection closed under its request (an error that wraps io.EOF). That is a failure, not
// the end of the object: the page raises SIGBUS, never reads as zeros.
func TestHTTPSourceDroppedConnectionsAreNotTheEnd(t *testing.T) {
	needPoison(t)
	const n = 16 * 4096
	defer unchanged(t)()
	inner := computedHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") == "bytes=0-0" {
			inner.ServeHTTP(w, r) // the probe that pins the object's version
			return
		}
		panic(http.ErrAbortHandler) // close the connection without an answer
	}))
	defer srv.Close()
	r := shared(t, n)
	defer r.Close()
	src := HTTPSource(srv.URL+"/computed/3/65536", HTTPOptions{Timeout: 2 * time.Second, Retries: 1})
	p, err := Mirror(r, ServeFaults(src), FaultAround(0))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if v, faulted := touchRecover(t, p.Original(), 5); !faulted {
		t.Fatalf("a page whose every request was dropped read %d: want SIGBUS", v)
	}
	if err := p.FaultErr(); !errors.Is(err, ErrSourceFailed) {
		t.Errorf("FaultErr = %v, want ErrSourceFailed", err)
	}
}

// refusal is a source that ServeFaults must refuse, the error the refusal must match (nil:
// any) and what its message must say.
type refusal struct {
	name string
	src  io.ReaderAt
	is   error
	want string
}

// refuses checks that Mirror(r, ServeFaults(c.src)) fails as each case says.
func refuses(t *testing.T, r *alloc.Region, cases []refusal) {
	t.Helper()
	for _, c := range cases {
		p, err := Mirror(r, ServeFaults(c.src))
		if err == nil {
			p.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if c.is != nil && !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %v saying %q", c.name, err, c.is, c.want)
		}
		t.Logf("%s: %v", c.name, err)
	}
}
