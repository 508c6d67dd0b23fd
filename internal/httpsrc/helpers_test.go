package httpsrc

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// object is a mutable object served by the test servers.
type object struct {
	mu   sync.Mutex
	data []byte
	etag string    // "" for none
	mod  time.Time // zero for no Last-Modified
}

func newObject(size int, seed uint64) *object {
	return &object{data: randBytes(size, seed), etag: `"v1"`, mod: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func randBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func (o *object) snapshot() ([]byte, string, time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.data, o.etag, o.mod
}

func (o *object) set(data []byte, etag string, mod time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.data, o.etag, o.mod = data, etag, mod
}

// serveContent serves o with http.ServeContent (ranges, If-Match, If-Unmodified-Since).
func (o *object) serveContent(w http.ResponseWriter, r *http.Request) {
	data, etag, mod := o.snapshot()
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", mod, bytes.NewReader(data))
}

// serveRange is a hand-written range handler: one range, If-Match, with a Content-Length or,
// if chunked, a chunked body.
func (o *object) serveRange(chunked bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		data, etag, _ := o.snapshot()
		size := int64(len(data))
		if etag != "" {
			w.Header().Set("ETag", etag)
			if im := r.Header.Get("If-Match"); im != "" && im != etag {
				w.WriteHeader(http.StatusPreconditionFailed)
				return
			}
		}
		a, b, ok := parseRangeHeader(r.Header.Get("Range"))
		if !ok {
			http.Error(w, "one range only", http.StatusBadRequest)
			return
		}
		if a >= size {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		b = min(b, size-1)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, size))
		if !chunked {
			w.Header().Set("Content-Length", strconv.FormatInt(b-a+1, 10))
		}
		w.WriteHeader(http.StatusPartialContent)
		if chunked {
			w.(http.Flusher).Flush()
		}
		w.Write(data[a : b+1])
	}
}

// parseRangeHeader parses "bytes=a-b".
func parseRangeHeader(h string) (a, b int64, ok bool) {
	r, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, 0, false
	}
	as, bs, ok := strings.Cut(r, "-")
	if !ok {
		return 0, 0, false
	}
	a, err1 := strconv.ParseInt(as, 10, 64)
	b, err2 := strconv.ParseInt(bs, 10, 64)
	return a, b, err1 == nil && err2 == nil && a <= b
}

// isProbe reports whether r is New's probe.
func isProbe(r *http.Request) bool { return r.Header.Get("Range") == "bytes=0-0" }

// server is an httptest server that counts requests (other than probes) and connections.
type server struct {
	*httptest.Server
	requests atomic.Int64 // requests other than probes
	conns    atomic.Int64 // connections accepted
}

func startServer(t testing.TB, h http.HandlerFunc) *server {
	t.Helper()
	s := &server{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isProbe(r) {
			s.requests.Add(1)
		}
		h(w, r)
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// open makes a Source for srv with cfg (URL filled in) and closes it at the end of the test.
func open(t testing.TB, srv *server, cfg Config) *Source {
	t.Helper()
	if cfg.URL == "" {
		cfg.URL = srv.URL + "/object"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// closeAtEnd closes c when the test ends. Called after startServer, it runs before the
// server's Close, which waits for blocked handlers.
func closeAtEnd(t *testing.T, c chan struct{}) {
	t.Cleanup(func() { close(c) })
}

// startTLS starts an https test server, closed at the end of the test.
func startTLS(t testing.TB, h http.HandlerFunc) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused certificate's handshake error
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}
