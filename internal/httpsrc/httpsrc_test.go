package httpsrc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const page = 4096

// checkRead compares s.ReadAt(len n, off) with the object's bytes under io.ReaderAt semantics.
func checkRead(t testing.TB, s *Source, data []byte, off int64, n int) {
	t.Helper()
	p := make([]byte, n)
	for i := range p {
		p[i] = 0xA5 // not what the object holds everywhere: a skipped copy shows
	}
	got, err := s.ReadAt(p, off)
	want := 0
	if off < int64(len(data)) {
		want = min(n, len(data)-int(off))
	}
	if got != want {
		t.Fatalf("ReadAt(len %d, off %d) = %d, %v; want %d bytes", n, off, got, err, want)
	}
	if want < n {
		if err != io.EOF {
			t.Fatalf("ReadAt(len %d, off %d) = %d, %v; want io.EOF", n, off, got, err)
		}
	} else if err != nil {
		t.Fatalf("ReadAt(len %d, off %d): %v", n, off, err)
	}
	if want > 0 && !bytes.Equal(p[:got], data[off:off+int64(got)]) {
		t.Fatalf("ReadAt(len %d, off %d): wrong bytes", n, off)
	}
}

// TestReadAtMatches reads fixed and random ranges, including the last partial page and past the
// end, from http.ServeContent and from a hand-written handler (with a Content-Length, and
// chunked).
func TestReadAtMatches(t *testing.T) {
	const size = 5*page + 1234
	for _, tc := range []struct {
		name    string
		handler func(o *object) http.HandlerFunc
	}{
		{"ServeContent", func(o *object) http.HandlerFunc { return o.serveContent }},
		{"HandWritten", func(o *object) http.HandlerFunc { return o.serveRange(false) }},
		{"HandWrittenChunked", func(o *object) http.HandlerFunc { return o.serveRange(true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newObject(size, 1)
			srv := startServer(t, tc.handler(o))
			s := open(t, srv, Config{})
			if s.Size() != size {
				t.Fatalf("Size() = %d, want %d", s.Size(), size)
			}
			fixed := []struct {
				off int64
				n   int
			}{
				{0, page}, {page, page}, {5 * page, page}, {5 * page, 1234}, {5*page + 1, 4 * page},
				{size - 1, 1}, {size - 1, 2}, {size, 1}, {size + 100, page}, {0, size}, {0, size + 1},
				{3, 0}, {size + 7, 0}, {0, 1}, {1, 2 * page},
			}
			for _, f := range fixed {
				checkRead(t, s, o.data, f.off, f.n)
			}
			r := rand.New(rand.NewPCG(2, 3))
			for range 200 {
				off := r.Int64N(size + 2*page)
				n := r.IntN(3 * page)
				if r.IntN(2) == 0 { // page-aligned, as the fault handlers ask
					off &^= page - 1
					n = page * (1 + r.IntN(3))
				}
				checkRead(t, s, o.data, off, n)
			}
			if _, err := s.ReadAt(make([]byte, 1), -1); err == nil {
				t.Fatal("ReadAt at offset -1 succeeded")
			}
		})
	}
}

// TestReadAtParallel reads from 8 goroutines at once, through fewer connections than readers.
func TestReadAtParallel(t *testing.T) {
	const size = 64*page + 100
	o := newObject(size, 4)
	srv := startServer(t, o.serveContent)
	s := open(t, srv, Config{MaxConns: 3})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 5))
			for range 40 {
				off := r.Int64N(size+page) &^ (page - 1)
				n := page * (1 + r.IntN(16))
				p := make([]byte, n)
				got, err := s.ReadAt(p, off)
				want := max(0, min(n, size-int(off)))
				if got != want || (want < n) != (err == io.EOF) || (want == n && err != nil) {
					t.Errorf("ReadAt(len %d, off %d) = %d, %v; want %d", n, off, got, err, want)
					return
				}
				if !bytes.Equal(p[:got], o.data[off:off+int64(got)]) {
					t.Errorf("ReadAt(len %d, off %d): wrong bytes", n, off)
					return
				}
			}
		})
	}
	wg.Wait()
	if c := srv.conns.Load(); c > 3+reuseSlack {
		t.Errorf("%d connections with MaxConns 3", c)
	}
}

// reuseSlack is how many connections beyond the expected a test tolerates. None: the test
// servers are plain HTTP, whose requests a Source makes on its own connections, reused
// whenever an answer was read to its end (net/http's Transport, used for HTTPS, drops a
// connection instead of reusing it if its write goroutine has not reported within 50ms that
// the request went out, which happens on a heavily loaded machine).
const reuseSlack = 0

// TestKeepAlive: many reads, sequential then parallel, reuse the pooled connections, and no more
// than MaxConns requests are ever in flight.
func TestKeepAlive(t *testing.T) {
	const size = 256 * page
	o := newObject(size, 6)
	var inFlight, maxInFlight atomic.Int64
	serve := o.serveRange(false)
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		serve(w, r)
		inFlight.Add(-1)
	})
	s := open(t, srv, Config{MaxConns: 4})
	p := make([]byte, 2*page)
	for i := range 100 {
		if _, err := s.ReadAt(p, int64(i)*page); err != nil {
			t.Fatal(err)
		}
	}
	if c := srv.conns.Load(); c > 1+reuseSlack {
		t.Fatalf("100 sequential reads (after the probe) used %d connections, want 1", c)
	}
	t.Logf("probe and 100 sequential reads: %d connections", srv.conns.Load())
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			p := make([]byte, page)
			for i := range 50 {
				if _, err := s.ReadAt(p, int64((g*50+i)%256)*page); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	t.Logf("then 400 reads from 8 goroutines: %d connections in all, at most %d requests in flight", srv.conns.Load(), maxInFlight.Load())
	if m := maxInFlight.Load(); m > 4 {
		t.Fatalf("%d requests in flight at once, MaxConns is 4", m)
	}
	if c := srv.conns.Load(); c > 4+reuseSlack {
		t.Fatalf("400 parallel reads used %d connections, MaxConns is 4", c)
	}
	if r := srv.requests.Load(); r != 500 {
		t.Fatalf("%d requests for 500 reads", r)
	}
}

// TestErrorAnswersKeepConnection: an error answer with a body is drained, not a lost connection.
func TestErrorAnswersKeepConnection(t *testing.T) {
	o := newObject(16*page, 7)
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") == "bytes=4096-8191" {
			http.Error(w, strings.Repeat("forbidden ", 200), http.StatusForbidden)
			return
		}
		o.serveContent(w, r)
	})
	s := open(t, srv, Config{})
	p := make([]byte, page)
	for range 20 {
		if _, err := s.ReadAt(p, page); err == nil {
			t.Fatal("403 read succeeded")
		}
		if _, err := s.ReadAt(p, 0); err != nil {
			t.Fatal(err)
		}
	}
	if c := srv.conns.Load(); c > 1+reuseSlack {
		t.Fatalf("%d connections for 40 reads, half of them answered 403, want 1", c)
	}
}

// TestNoRangeSupport: a server that always answers 200 with the whole object is refused by New.
func TestNoRangeSupport(t *testing.T) {
	o := newObject(3*page, 8)
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write(o.data) })
	_, err := New(Config{URL: srv.URL})
	if err == nil || !strings.Contains(err.Error(), "does not support Range") {
		t.Fatalf("New = %v, want an error saying Range is not supported", err)
	}
}

// TestEmptyObject: an empty object answers 416 "bytes */0" (ServeContent) or 200 with an empty
// body; its Source has size 0 and every read is io.EOF without a request.
func TestEmptyObject(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
	}{
		{"ServeContent416", (&object{data: []byte{}}).serveContent},
		{"Empty200", func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Content-Length", "0") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, tc.h)
			s := open(t, srv, Config{})
			if s.Size() != 0 {
				t.Fatalf("Size() = %d", s.Size())
			}
			if n, err := s.ReadAt(make([]byte, page), 0); n != 0 || err != io.EOF {
				t.Fatalf("ReadAt = %d, %v; want 0, io.EOF", n, err)
			}
			if r := srv.requests.Load(); r != 0 {
				t.Fatalf("%d requests", r)
			}
		})
	}
}

// Test416: a 416 to the probe of a non-empty object, or to a read inside the object, is an
// error; with another total size it says the object changed.
func Test416(t *testing.T) {
	o := newObject(4*page, 9)
	var total atomic.Int64
	total.Store(4 * page)
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := total.Load()
		if isProbe(r) && n == 4*page {
			o.serveContent(w, r)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", n))
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
	})
	s := open(t, srv, Config{})
	p := make([]byte, page)
	_, err := s.ReadAt(p, page)
	if err == nil || errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "416") {
		t.Fatalf("416, same size: %v", err)
	}
	total.Store(2 * page)
	if _, err := s.ReadAt(p, page); !errors.Is(err, ErrChanged) {
		t.Fatalf("416, size 8192: %v, want ErrChanged", err)
	}
	if r := srv.requests.Load(); r != 2 {
		t.Fatalf("%d requests, want 2 (416 is not retried)", r)
	}
	total.Store(100)
	if _, err := New(Config{URL: srv.URL}); err == nil || !strings.Contains(err.Error(), "416") {
		t.Fatalf("New with 416 for bytes=0-0 of 100 bytes: %v", err)
	}
}

// TestBadAnswers: wrong Content-Range, short or long bodies, 200 instead of 206, a content
// coding, another ETag, 412: errors, never data; only a truncated body is retried.
func TestBadAnswers(t *testing.T) {
	const size = 8 * page
	o := newObject(size, 10)
	cr := func(w http.ResponseWriter, a, b int64, total string) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%s", a, b, total))
	}
	body := func(w http.ResponseWriter, a, b int64) {
		w.Header().Set("Content-Length", strconv.FormatInt(b-a+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(o.data[a : b+1])
	}
	for _, tc := range []struct {
		name     string
		bad      func(w http.ResponseWriter, a, b int64)
		changed  bool   // want ErrChanged
		attempts int64  // requests expected (Retries is 2)
		msg      string // in the error
	}{
		{"200", func(w http.ResponseWriter, a, b int64) { w.Write(o.data) }, false, 1, "200 OK"},
		{"WrongStart", func(w http.ResponseWriter, a, b int64) { cr(w, a+1, b+1, "32768"); body(w, a+1, b+1) }, false, 1, "asked bytes"},
		{"WrongEnd", func(w http.ResponseWriter, a, b int64) { cr(w, a, b-1, "32768"); body(w, a, b-1) }, false, 1, "asked bytes"},
		{"WrongTotal", func(w http.ResponseWriter, a, b int64) { cr(w, a, b, "32769"); body(w, a, b) }, true, 1, "32769"},
		{"StarTotal", func(w http.ResponseWriter, a, b int64) { cr(w, a, b, "*"); body(w, a, b) }, false, 1, "no total size"},
		{"NoContentRange", func(w http.ResponseWriter, a, b int64) { body(w, a, b) }, false, 1, "without a Content-Range"},
		{"MalformedContentRange", func(w http.ResponseWriter, a, b int64) {
			w.Header().Set("Content-Range", "bytes 12-x/32768")
			body(w, a, b)
		}, false, 1, "malformed Content-Range"},
		{"TwoContentRanges", func(w http.ResponseWriter, a, b int64) {
			cr(w, a, b, "32768")
			w.Header().Add("Content-Range", "bytes 0-0/32768")
			body(w, a, b)
		}, false, 1, "several Content-Range"},
		{"ShortContentLength", func(w http.ResponseWriter, a, b int64) { cr(w, a, b, "32768"); body(w, a, b-10) }, false, 1, "Content-Length"},
		{"TruncatedBody", func(w http.ResponseWriter, a, b int64) {
			cr(w, a, b, "32768")
			w.Header().Set("Content-Length", strconv.FormatInt(b-a+1, 10))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(o.data[a : a+100])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // drop the connection mid-body
		}, false, 3, "truncated"},
		{"TruncatedChunkedBody", func(w http.ResponseWriter, a, b int64) {
			cr(w, a, b, "32768")
			w.WriteHeader(http.StatusPartialContent)
			w.Write(o.data[a : a+100])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}, false, 3, "truncated"},
		{"LongChunkedBody", func(w http.ResponseWriter, a, b int64) {
			cr(w, a, b, "32768")
			w.WriteHeader(http.StatusPartialContent)
			w.(http.Flusher).Flush()
			w.Write(o.data[a : b+2])
		}, false, 1, "longer than Content-Range"},
		{"Gzip", func(w http.ResponseWriter, a, b int64) {
			cr(w, a, b, "32768")
			w.Header().Set("Content-Encoding", "gzip")
			body(w, a, b)
		}, false, 1, "Content-Encoding"},
		{"OtherETag", func(w http.ResponseWriter, a, b int64) {
			cr(w, a, b, "32768")
			w.Header().Set("ETag", `"v2"`)
			body(w, a, b)
		}, true, 1, `ETag is "v2"`},
		{"412", func(w http.ResponseWriter, a, b int64) { w.WriteHeader(http.StatusPreconditionFailed) }, true, 1, "412"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
				if isProbe(r) {
					o.serveContent(w, r)
					return
				}
				if r.Header.Get("If-Match") != `"v1"` {
					t.Errorf("If-Match = %q", r.Header.Get("If-Match"))
				}
				a, b, _ := parseRangeHeader(r.Header.Get("Range"))
				tc.bad(w, a, b)
			})
			s := open(t, srv, Config{Retries: 2})
			p := make([]byte, 2*page)
			n, err := s.ReadAt(p, page)
			if err == nil || n != 0 {
				t.Fatalf("ReadAt = %d, %v; want 0 and an error", n, err)
			}
			if errors.Is(err, ErrChanged) != tc.changed {
				t.Errorf("errors.Is(%v, ErrChanged) = %v", err, !tc.changed)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
			var e *Error
			if !errors.As(err, &e) || int64(e.Attempts) != tc.attempts || e.Start != page || e.End != 3*page-1 {
				t.Errorf("error %#v: want an *Error for bytes %d-%d after %d attempts", e, page, 3*page-1, tc.attempts)
			}
			if r := srv.requests.Load(); r != tc.attempts {
				t.Errorf("%d requests, want %d", r, tc.attempts)
			}
		})
	}
}

// TestObjectChanged: a changed object fails reads with ErrChanged, whichever validator pins it:
// a strong ETag (412 to If-Match), Last-Modified (412 to If-Unmodified-Since), a weak ETag
// (compared by the source), or none (the size).
func TestObjectChanged(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name             string
		etag, etag2      string
		mod, mod2        time.Time
		size2            int
		wantIfMatch      string
		wantIfUnmodSince bool
	}{
		{"StrongETag", `"a"`, `"b"`, t0, t0, 6 * page, `"a"`, false},
		{"LastModified", "", "", t0, t0.Add(time.Second), 6 * page, "", true},
		{"WeakETag", `W/"a"`, `W/"b"`, time.Time{}, time.Time{}, 6 * page, "", false},
		{"SizeOnly", "", "", time.Time{}, time.Time{}, 7 * page, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &object{data: randBytes(6*page, 11), etag: tc.etag, mod: tc.mod}
			srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
				if !isProbe(r) {
					if got := r.Header.Get("If-Match"); got != tc.wantIfMatch {
						t.Errorf("If-Match = %q, want %q", got, tc.wantIfMatch)
					}
					if got := r.Header.Get("If-Unmodified-Since"); (got != "") != tc.wantIfUnmodSince {
						t.Errorf("If-Unmodified-Since = %q", got)
					}
				}
				o.serveContent(w, r)
			})
			s := open(t, srv, Config{})
			checkRead(t, s, o.data, page, page)
			o.set(randBytes(tc.size2, 12), tc.etag2, tc.mod2)
			n, err := s.ReadAt(make([]byte, page), page)
			if n != 0 || !errors.Is(err, ErrChanged) {
				t.Fatalf("ReadAt after the change = %d, %v; want ErrChanged", n, err)
			}
			if r := srv.requests.Load(); r != 2 {
				t.Fatalf("%d requests, want 2", r)
			}
		})
	}
}

// TestPinnedConfig: Source.Config pins size and validator; a Source made from it in another
// process (here: after a Marshal/Unmarshal round trip) refuses a changed object.
func TestPinnedConfig(t *testing.T) {
	o := newObject(3*page, 13)
	srv := startServer(t, o.serveContent)
	s := open(t, srv, Config{URL: srv.URL + "/obj?sig=x"})
	c := s.Config()
	if c.Size != 3*page || c.ETag != `"v1"` || c.LastModified == "" || c.URL != srv.URL+"/obj?sig=x" {
		t.Fatalf("Config() = %+v", c)
	}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	s2 := open(t, srv, c2)
	checkRead(t, s2, o.data, 0, page)

	o.set(o.data, `"v2"`, o.mod)
	if _, err := New(c2); !errors.Is(err, ErrChanged) {
		t.Fatalf("New with a pinned ETag after a change: %v, want ErrChanged", err)
	}
	o.set(randBytes(2*page, 14), `"v1"`, o.mod)
	if _, err := New(c2); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "8192 bytes") {
		t.Fatalf("New with a pinned size after a change: %v, want ErrChanged", err)
	}
}

// TestRetryTransient: 503, 429, 408 and a dropped connection are retried, then the read
// succeeds.
func TestRetryTransient(t *testing.T) {
	o := newObject(4*page, 15)
	var mu sync.Mutex
	var failures []func(w http.ResponseWriter)
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		var f func(w http.ResponseWriter)
		if !isProbe(r) && len(failures) > 0 {
			f, failures = failures[0], failures[1:]
		}
		mu.Unlock()
		if f != nil {
			f(w)
			return
		}
		o.serveContent(w, r)
	})
	status := func(code int) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) { http.Error(w, "busy", code) }
	}
	drop := func(w http.ResponseWriter) { panic(http.ErrAbortHandler) }
	s := open(t, srv, Config{Retries: 3})
	mu.Lock()
	failures = []func(http.ResponseWriter){status(503), status(429), status(408)}
	mu.Unlock()
	checkRead(t, s, o.data, page, 2*page)
	if r := srv.requests.Load(); r != 4 {
		t.Fatalf("%d requests, want 4 (3 failures, 1 success)", r)
	}
	mu.Lock()
	failures = []func(http.ResponseWriter){drop, status(502)}
	mu.Unlock()
	checkRead(t, s, o.data, 0, page)
}

// TestRetriesExhausted: a persistent 503 fails after Retries+1 attempts with an error that names
// the URL without its query, the range, the attempts and the cause, and no secret.
func TestRetriesExhausted(t *testing.T) {
	o := newObject(4*page, 16)
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		if isProbe(r) {
			o.serveContent(w, r)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	url := strings.Replace(srv.URL, "http://", "http://user:hunter2@", 1) + "/bucket/obj?X-Amz-Signature=SECRETSIG"
	s := open(t, srv, Config{URL: url, Retries: 2, Header: map[string]string{"Authorization": "Bearer SECRETTOKEN"}})
	start := time.Now()
	_, err := s.ReadAt(make([]byte, page), page)
	if err == nil {
		t.Fatal("ReadAt succeeded")
	}
	if r := srv.requests.Load(); r != 3 {
		t.Fatalf("%d requests, want 3", r)
	}
	msg := err.Error()
	for _, want := range []string{srv.URL + "/bucket/obj bytes=", "bytes=4096-8191", "3 attempts", "503 Service Unavailable"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	for _, secret := range []string{"SECRET", "hunter2", "X-Amz"} {
		if strings.Contains(msg, secret) {
			t.Errorf("error %q reveals %q", msg, secret)
		}
	}
	if d := time.Since(start); d > 2*time.Second { // backoff: 10ms+20ms at most
		t.Errorf("3 attempts took %v", d)
	}
}

// TestPermanentFailure: 403 and 404 fail at once, in New and in ReadAt, without retrying.
func TestPermanentFailure(t *testing.T) {
	o := newObject(4*page, 17)
	var code, all atomic.Int64 // code 0: a good probe, 403 for reads
	code.Store(http.StatusForbidden)
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		all.Add(1)
		c := int(code.Load())
		if c == 0 && isProbe(r) {
			o.serveContent(w, r)
			return
		}
		http.Error(w, "no", max(c, http.StatusForbidden))
	})
	if _, err := New(Config{URL: srv.URL, Retries: 3}); err == nil || !strings.Contains(err.Error(), "403 Forbidden") || !strings.Contains(err.Error(), "1 attempt:") {
		t.Fatalf("New against 403: %v", err)
	}
	code.Store(http.StatusNotFound)
	if _, err := New(Config{URL: srv.URL, Retries: 3}); err == nil || !strings.Contains(err.Error(), "404 Not Found") {
		t.Fatalf("New against 404: %v", err)
	}
	if n := all.Load(); n != 2 {
		t.Fatalf("%d requests for two failed New, want 2", n)
	}
	code.Store(0)
	s := open(t, srv, Config{Retries: 3})
	if _, err := s.ReadAt(make([]byte, page), 0); err == nil || !strings.Contains(err.Error(), "403 Forbidden") {
		t.Fatalf("ReadAt against 403: %v", err)
	}
	if r := srv.requests.Load(); r != 1 {
		t.Fatalf("%d requests, want 1", r)
	}
}

// TestRedirectNotFollowed: a redirect is an error that says so (and does not quote Location).
func TestRedirectNotFollowed(t *testing.T) {
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere?token=SECRET", http.StatusFound)
	})
	_, err := New(Config{URL: srv.URL})
	if err == nil || !strings.Contains(err.Error(), "redirects are not followed") || strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("New against a redirect: %v", err)
	}
}

// TestServerClosed: after the server goes away, ReadAt fails promptly.
func TestServerClosed(t *testing.T) {
	o := newObject(4*page, 18)
	srv := startServer(t, o.serveContent)
	s := open(t, srv, Config{Retries: 2})
	checkRead(t, s, o.data, 0, page)
	srv.Close()
	start := time.Now()
	n, err := s.ReadAt(make([]byte, page), page)
	if err == nil || n != 0 {
		t.Fatalf("ReadAt after the server closed = %d, %v", n, err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("ReadAt took %v to fail", d)
	}
	t.Logf("%v", err)
}

// TestHangingServer: a server that never answers, or stops mid-body, fails ReadAt after
// Timeout per attempt.
func TestHangingServer(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for _, midBody := range []bool{false, true} {
		t.Run(fmt.Sprintf("midBody=%v", midBody), func(t *testing.T) {
			o := newObject(4*page, 19)
			release := make(chan struct{})
			srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
				if isProbe(r) {
					o.serveContent(w, r)
					return
				}
				if midBody {
					w.Header().Set("Content-Range", "bytes 4096-8191/16384")
					w.Header().Set("Content-Length", "4096")
					w.WriteHeader(http.StatusPartialContent)
					w.Write(o.data[page : page+100])
					w.(http.Flusher).Flush()
				}
				select {
				case <-release:
				case <-r.Context().Done():
				}
			})
			closeAtEnd(t, release)
			s := open(t, srv, Config{Timeout: timeout, Retries: 1})
			start := time.Now()
			n, err := s.ReadAt(make([]byte, page), page)
			d := time.Since(start)
			if n != 0 || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timeout") {
				t.Fatalf("ReadAt = %d, %v; want a timeout", n, err)
			}
			if d < 2*timeout || d > 2*timeout+3*time.Second {
				t.Fatalf("2 attempts of %v took %v", timeout, d)
			}
			if r := srv.requests.Load(); r != 2 {
				t.Fatalf("%d requests, want 2", r)
			}
		})
	}
}

// TestClose: Close interrupts a read in progress; later reads fail with ErrClosed, without a
// request.
func TestClose(t *testing.T) {
	o := newObject(4*page, 20)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		if isProbe(r) {
			o.serveContent(w, r)
			return
		}
		started <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	closeAtEnd(t, release)
	s := open(t, srv, Config{})
	errc := make(chan error, 1)
	go func() {
		_, err := s.ReadAt(make([]byte, page), 0)
		errc <- err
	}()
	<-started
	start := time.Now()
	s.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("interrupted ReadAt: %v, want ErrClosed", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v to interrupt ReadAt", d)
	}
	if _, err := s.ReadAt(make([]byte, page), 0); err != ErrClosed {
		t.Fatalf("ReadAt after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r := srv.requests.Load(); r != 1 {
		t.Fatalf("%d requests, want 1", r)
	}
}

// TestHTTPS reads over TLS (HTTP/1.1), and refuses an unknown certificate at once.
func TestHTTPS(t *testing.T) {
	o := newObject(5*page+7, 21)
	srv := startTLS(t, func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 1 {
			t.Errorf("protocol %s", r.Proto)
		}
		o.serveContent(w, r)
	})
	tr := srv.Client().Transport.(*http.Transport)
	s, err := newSource(Config{URL: srv.URL}, tr.TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for off := int64(0); off < s.Size()+page; off += page {
		checkRead(t, s, o.data, off, page)
	}
	_, err = New(Config{URL: srv.URL, Retries: 3})
	var e *Error
	if !errors.As(err, &e) || e.Attempts != 1 || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("New with an unknown certificate: %v, want a certificate error after 1 attempt", err)
	}
}

// TestParseContentRange checks the Content-Range parser on valid and invalid values.
func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		v       string
		a, b, n int64
		ok      bool
	}{
		{"bytes 0-0/1", 0, 0, 1, true},
		{"bytes 4096-8191/16384", 4096, 8191, 16384, true},
		{"BYTES 1-2/3", 1, 2, 3, true},
		{"bytes 1-2/*", 1, 2, -1, true},
		{"bytes 9223372036854775805-9223372036854775806/9223372036854775807", 9223372036854775805, 9223372036854775806, 9223372036854775807, true},
		{"bytes 2-1/3", 0, 0, 0, false},
		{"bytes 0-3/3", 0, 0, 0, false},
		{"bytes 0-0/0", 0, 0, 0, false},
		{"bytes +1-2/3", 0, 0, 0, false},
		{"bytes -1-2/3", 0, 0, 0, false},
		{"bytes 1-2/ 3", 0, 0, 0, false},
		{"bytes 1-2", 0, 0, 0, false},
		{"bytes */3", 0, 0, 0, false},
		{"items 1-2/3", 0, 0, 0, false},
		{"bytes  1-2/3", 0, 0, 0, false},
		{"bytes 1-2/99999999999999999999", 0, 0, 0, false},
		{"bytes 0-9223372036854775808/9223372036854775809", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	} {
		a, b, n, ok := parseContentRange(tc.v)
		if ok != tc.ok || (ok && (a != tc.a || b != tc.b || n != tc.n)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %d, %v", tc.v, a, b, n, ok)
		}
	}
}
