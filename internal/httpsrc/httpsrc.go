// Package httpsrc is an io.ReaderAt over HTTP(S) Range requests, for this module's fault
// handler processes: mirror exposes it as a page source, so that memory can be filled lazily
// from an object store (through a presigned URL), a CDN, nginx or any HTTP/1.1 server that
// honours Range.
//
// A fault handler turns an error from ReadAt into a poisoned page, and a wrong byte into silent
// corruption, so a Source never returns bytes it has not verified: every answer must be
// 206 Partial Content with a Content-Range that matches the range asked and the object's size,
// an identity encoding and a body of exactly that length. The object is pinned at New by its
// size and validator (a strong ETag is sent as If-Match, else Last-Modified as
// If-Unmodified-Since); an answer from a different version of the object fails with ErrChanged.
// A process that hands the object to handler processes passes them Source.Config, which pins
// that version, so that every process reads the same bytes or fails.
//
// Each ReadAt is one Range request, retried after transient failures (connection errors,
// timeouts, truncated bodies, HTTP 408, 429 and 5xx) with a short bounded backoff (Retry-After
// is not waited for); every attempt has its own timeout. A Source keeps its own pool of
// keep-alive HTTP/1.1 connections and is safe for concurrent use: for plain HTTP (no proxy
// from the environment) the goroutine that reads writes the request and reads the answer on a
// connection of that pool itself, at about half the CPU of net/http's Transport per request
// (see direct.go); HTTPS goes through a Transport. No error message includes
// the URL's query string or user information (presigned URLs carry secrets there) or a header
// value, and the package logs nothing.
//
// Redirects are not followed: configure the final URL.
package httpsrc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mirrormem/mirrormem/internal/netsrc"
)

// ErrChanged is wrapped by the errors that show that the object is no longer the one New
// opened (or the one the Config pinned): HTTP 412, another size, another ETag or Last-Modified.
var ErrChanged = errors.New("httpsrc: the object changed since it was opened")

// ErrClosed is returned by ReadAt after Close, and wrapped by the error of a ReadAt that Close
// interrupted.
var ErrClosed = errors.New("httpsrc: source is closed")

// Error describes a request that failed for good: a non-transient failure, or a transient one
// that persisted through every retry.
type Error struct {
	URL        string // scheme://host/path: no query string, no user information
	Start, End int64  // the byte range asked, inclusive
	Attempts   int    // requests made
	Err        error  // the last cause
}

// Error returns a message naming the URL without its query, the range, the attempts and the
// last cause.
func (e *Error) Error() string {
	return fmt.Sprintf("httpsrc: GET %s bytes=%d-%d: failed after %s: %v", e.URL, e.Start, e.End, netsrc.Attempts(e.Attempts), e.Err)
}

// Unwrap returns the last cause.
func (e *Error) Unwrap() error { return e.Err }

// Source reads one HTTP object with Range requests. It is safe for concurrent use.
type Source struct {
	cfg     Config // as given, with the pinned Size, ETag and LastModified
	timeout time.Duration
	retry   netsrc.Retry

	tmpl     *http.Request // method, URL, Host; cloned with a context per attempt
	redacted string
	header   http.Header // the configured fields
	cond     http.Header // header plus the precondition (If-Match or If-Unmodified-Since)

	tr     *http.Transport
	direct *directPool     // plain HTTP, no proxy: the Source's own connections (see direct.go)
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	closed atomic.Bool

	size    int64
	etag    string
	lastMod string
}

// New validates cfg and probes the object with GET and "Range: bytes=0-0" (not HEAD: presigned
// URLs are often signed for GET only). The server must answer 206 with a Content-Range giving
// the total size, or 416 with "Content-Range: bytes */0" for an empty object. New records the
// object's ETag, else its Last-Modified, and fails with ErrChanged if cfg pins a size or
// validator that the server no longer reports.
func New(cfg Config) (*Source, error) {
	return newSource(cfg, nil)
}

// newSource is New with a TLS configuration (tests use httptest's certificate).
func newSource(cfg Config, tlsConf *tls.Config) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	d := cfg.tuning()
	s := &Source{
		cfg:      cfg,
		timeout:  d.Timeout,
		redacted: redact(u),
		header:   make(http.Header, len(cfg.Header)),
		tmpl: &http.Request{
			Method:     http.MethodGet,
			URL:        u,
			Proto:      "HTTP/1.1",
			ProtoMajor: 1,
			ProtoMinor: 1,
			Host:       u.Host,
		},
	}
	for k, v := range cfg.Header {
		k = http.CanonicalHeaderKey(k)
		if k == "Host" {
			s.tmpl.Host = v
			continue
		}
		s.header[k] = []string{v}
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	s.tr = &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: d.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: d.Timeout,
		DisableCompression:  true,
		MaxIdleConns:        d.MaxConns,
		MaxIdleConnsPerHost: d.MaxConns,
		MaxConnsPerHost:     d.MaxConns,
		IdleConnTimeout:     90 * time.Second,
		Protocols:           &protos,
	}
	if proxy, err := http.ProxyFromEnvironment(s.tmpl); u.Scheme == "http" && proxy == nil && err == nil {
		port := u.Port()
		if port == "" {
			port = "80"
		}
		s.direct = newDirectPool(net.JoinHostPort(u.Hostname(), port), d.MaxConns, s.tr.DialContext)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.retry = netsrc.Retry{Retries: d.Retries, Done: s.ctx.Done(), Closed: ErrClosed}

	attempts, err := s.retry.Do(func(int) (bool, error) { return s.probe() })
	if err == nil {
		err = s.checkPinned()
	}
	if err != nil {
		s.Close()
		return nil, &Error{URL: s.redacted, Start: 0, End: 0, Attempts: attempts, Err: err}
	}

	s.cond = s.header.Clone()
	if s.cond == nil {
		s.cond = http.Header{}
	}
	switch {
	case s.etag != "" && !strings.HasPrefix(s.etag, "W/"):
		// If-Match compares strongly: a weak tag would never match, so it is only
		// compared with the answers' ETag below.
		s.cond["If-Match"] = []string{s.etag}
	case s.lastMod != "":
		s.cond["If-Unmodified-Since"] = []string{s.lastMod}
	}
	s.cfg.Size, s.cfg.ETag, s.cfg.LastModified = s.size, s.etag, s.lastMod
	return s, nil
}

// checkPinned compares the probed object with the size and validators that the Config pins.
func (s *Source) checkPinned() error {
	c := s.cfg
	if c.Size != 0 && c.Size != s.size {
		return fmt.Errorf("%w: the server reports %d bytes, the config says %d", ErrChanged, s.size, c.Size)
	}
	if err := pinValidator("ETag", c.ETag, &s.etag, etagWeakEqual); err != nil {
		return err
	}
	return pinValidator("Last-Modified", c.LastModified, &s.lastMod, sameTime)
}

// pinValidator checks the value that the server sent for the validator field (ETag or
// Last-Modified) against the one the Config pins, if any, compared with same; on a match it
// keeps the pinned spelling, which later answers are compared with.
func pinValidator(field, pinned string, got *string, same func(a, b string) bool) error {
	switch {
	case pinned == "":
		return nil
	case *got == "":
		return fmt.Errorf("%w: the config pins %s %s but the server sends none", ErrChanged, field, pinned)
	case !same(pinned, *got):
		return fmt.Errorf("%w: %s is %s; the config pins %s", ErrChanged, field, netsrc.Clip(*got), pinned)
	}
	*got = pinned
	return nil
}

// Size returns the object's size in bytes.
func (s *Source) Size() int64 { return s.size }

// Config returns the Config that New was given, with Size, ETag and LastModified set to what
// the probe found: a Source made from it in another process reads the same version of the
// object, or fails with ErrChanged.
func (s *Source) Config() Config {
	c := s.cfg
	if c.Header != nil {
		h := make(map[string]string, len(c.Header))
		for k, v := range c.Header {
			h[k] = v
		}
		c.Header = h
	}
	return c
}

// Close interrupts reads in progress (they fail with an error wrapping ErrClosed) and closes
// the idle connections. Later reads return ErrClosed. Close is idempotent and returns nil.
func (s *Source) Close() error {
	s.closed.Store(true)
	s.cancel()
	s.closeIdle()
	return nil
}

// ReadAt reads len(p) bytes at offset off with one Range request (retried on transient
// failures), following the io.ReaderAt contract: it returns len(p) and nil; or, if the range
// runs past the end of the object, the bytes up to the end and io.EOF; or 0 and an error (an
// *Error, wrapping ErrChanged if the object changed). An empty p reads nothing and returns 0
// and nil. The contents of p are unspecified after an error. A negative off is an error.
func (s *Source) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("httpsrc: ReadAt at negative offset %d", off)
	}
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= s.size {
		return 0, io.EOF
	}
	n, eof := int64(len(p)), false
	if rem := s.size - off; n > rem {
		n, eof = rem, true
	}
	err := s.readRange(p[:n], off)
	if s.closed.Load() {
		// A connection that went back to the pool after Close's closeIdle.
		s.closeIdle()
	}
	if err != nil {
		return 0, err
	}
	if eof {
		return int(n), io.EOF
	}
	return int(n), nil
}

// closeIdle closes the idle connections.
func (s *Source) closeIdle() {
	s.tr.CloseIdleConnections()
	if s.direct != nil {
		s.direct.closeIdle()
	}
}

// roundTrip makes one request: on the Source's own connections for plain HTTP (see direct.go),
// else through the Transport.
func (s *Source) roundTrip(req *http.Request) (*http.Response, error) {
	if s.direct != nil {
		return s.direct.roundTrip(req)
	}
	return s.tr.RoundTrip(req)
}

// readRange fills p from offset start, with retries.
func (s *Source) readRange(p []byte, start int64) error {
	end := start + int64(len(p)) - 1
	attempts, err := s.retry.Do(func(int) (bool, error) { return s.attempt(p, start, end) })
	if err != nil {
		return &Error{URL: s.redacted, Start: start, End: end, Attempts: attempts, Err: err}
	}
	return nil
}

// request returns a GET for bytes start-end with the given header fields and context.
func (s *Source) request(ctx context.Context, start, end int64, h http.Header) *http.Request {
	var buf [48]byte
	b := append(buf[:0], "bytes="...)
	b = strconv.AppendInt(b, start, 10)
	b = append(b, '-')
	b = strconv.AppendInt(b, end, 10)
	hdr := make(http.Header, len(h)+1)
	for k, v := range h {
		hdr[k] = v // shared, read-only
	}
	hdr["Range"] = []string{string(b)}
	req := s.tmpl.WithContext(ctx)
	req.Header = hdr
	return req
}

// attempt makes one request for bytes start-end into p. It reports whether a failure is
// transient (worth retrying).
func (s *Source) attempt(p []byte, start, end int64) (transient bool, err error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	resp, err := s.roundTrip(s.request(ctx, start, end, s.cond))
	if err != nil {
		return s.netErr(ctx, err)
	}
	ok := false
	defer func() { finish(resp.Body, ok) }()

	if resp.StatusCode != http.StatusPartialContent {
		return s.statusErr(resp)
	}
	if err := s.checkPartial(resp, start, end); err != nil {
		return false, err
	}
	if _, err := io.ReadFull(resp.Body, p); err != nil {
		return s.bodyErr(ctx, err, len(p))
	}
	if resp.ContentLength < 0 {
		// No Content-Length (chunked): the body must end here.
		if err := expectEOF(resp.Body); err != nil {
			return s.bodyErr(ctx, err, len(p))
		}
	}
	ok = true
	return false, nil
}

// probe makes one request for bytes 0-0 and records the size and validators. It reports
// whether a failure is transient.
func (s *Source) probe() (transient bool, err error) {
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	defer cancel()
	resp, err := s.roundTrip(s.request(ctx, 0, 0, s.header))
	if err != nil {
		return s.netErr(ctx, err)
	}
	ok := false
	defer func() { finish(resp.Body, ok) }()

	s.etag = resp.Header.Get("Etag")
	s.lastMod = resp.Header.Get("Last-Modified")
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := checkEncoding(resp); err != nil {
			return false, err
		}
		start, end, total, err := contentRange(resp)
		if err != nil {
			return false, err
		}
		if total < 0 {
			return false, errors.New("Content-Range gives no total size (bytes a-b/*): the object's size is unknown")
		}
		if start != 0 || end != 0 {
			return false, fmt.Errorf("asked bytes 0-0, the server sent Content-Range bytes %d-%d/%d", start, end, total)
		}
		if resp.ContentLength >= 0 && resp.ContentLength != 1 {
			return false, fmt.Errorf("Content-Length %d disagrees with Content-Range bytes 0-0", resp.ContentLength)
		}
		one := make([]byte, 1)
		if _, err := io.ReadFull(resp.Body, one); err != nil {
			return s.bodyErr(ctx, err, 1)
		}
		if resp.ContentLength < 0 {
			if err := expectEOF(resp.Body); err != nil {
				return s.bodyErr(ctx, err, 1)
			}
		}
		s.size = total
	case http.StatusRequestedRangeNotSatisfiable:
		// What a server answers for bytes=0-0 of an empty object.
		total, err := unsatisfiedRange(resp)
		if err != nil {
			return false, err
		}
		if total != 0 {
			return false, fmt.Errorf("HTTP 416 Range Not Satisfiable for bytes=0-0 of an object of %d bytes", total)
		}
		s.size = 0
	case http.StatusOK:
		if resp.ContentLength == 0 {
			// An empty object, sent whole: no range to honour.
			s.size = 0
			break
		}
		return false, errors.New("HTTP 200 OK to a Range request: the server does not support Range requests")
	default:
		return s.statusErr(resp)
	}
	ok = true
	return false, nil
}

// finish closes a response body. After a failure it first drains a bounded amount, so that a
// short error body does not cost the connection.
func finish(body io.ReadCloser, ok bool) {
	if !ok {
		io.CopyN(io.Discard, body, 64<<10)
	}
	body.Close()
}

// expectEOF checks that a body has no byte left.
func expectEOF(body io.Reader) error {
	var b [1]byte
	n, err := io.ReadFull(body, b[:])
	if n > 0 {
		return errLongBody
	}
	if err == io.EOF {
		return nil
	}
	return err
}

var errLongBody = errors.New("the body is longer than Content-Range says")

// netErr classifies an error of RoundTrip.
func (s *Source) netErr(ctx context.Context, err error) (bool, error) {
	if s.ctx.Err() != nil {
		return false, ErrClosed
	}
	if ctx.Err() != nil {
		return true, fmt.Errorf("no answer within the %v timeout: %w", s.timeout, context.DeadlineExceeded)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its message quotes the whole URL
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return false, err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		// A connection closed under the request. Not the end of the object: the error must
		// not match io.EOF, which a reader takes for the end and fills with zeros.
		return true, fmt.Errorf("the connection closed before the answer (%v)", err)
	}
	return true, err
}

// bodyErr classifies an error while reading a body that should have held want bytes.
func (s *Source) bodyErr(ctx context.Context, err error, want int) (bool, error) {
	switch {
	case err == errLongBody:
		return false, err
	case s.ctx.Err() != nil:
		return false, ErrClosed
	case ctx.Err() != nil:
		return true, fmt.Errorf("body not complete within the %v timeout: %w", s.timeout, context.DeadlineExceeded)
	case err == io.ErrUnexpectedEOF || err == io.EOF:
		return true, fmt.Errorf("the body ended before its %d bytes (truncated): %w", want, io.ErrUnexpectedEOF)
	}
	return true, fmt.Errorf("reading the body: %w", err)
}

// statusErr describes an answer whose status is not 206 Partial Content.
func (s *Source) statusErr(resp *http.Response) (bool, error) {
	code := resp.StatusCode
	switch {
	case code == http.StatusOK:
		return false, errors.New("HTTP 200 OK (the whole object) instead of 206 Partial Content")
	case code == http.StatusPreconditionFailed:
		return false, fmt.Errorf("%w: HTTP 412 Precondition Failed (%s)", ErrChanged, s.precondition())
	case code == http.StatusRequestedRangeNotSatisfiable:
		if total, err := unsatisfiedRange(resp); err == nil && total != s.size {
			return false, fmt.Errorf("%w: HTTP 416 Range Not Satisfiable, the object is now %d bytes, was %d", ErrChanged, total, s.size)
		}
		return false, errors.New("HTTP 416 Range Not Satisfiable for a range inside the object")
	case code >= 300 && code < 400:
		return false, fmt.Errorf("HTTP %d %s: redirects are not followed, configure the final URL", code, http.StatusText(code))
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code >= 500:
		return true, fmt.Errorf("HTTP %d %s", code, http.StatusText(code))
	}
	return false, fmt.Errorf("HTTP %d %s", code, http.StatusText(code))
}

// precondition describes the precondition the requests carry.
func (s *Source) precondition() string {
	if v := s.cond["If-Match"]; len(v) > 0 {
		return "If-Match: " + v[0]
	}
	if v := s.cond["If-Unmodified-Since"]; len(v) > 0 {
		return "If-Unmodified-Since: " + v[0]
	}
	return "no precondition sent"
}

// checkPartial checks the headers of a 206 answer to a request for bytes start-end.
func (s *Source) checkPartial(resp *http.Response, start, end int64) error {
	if err := checkEncoding(resp); err != nil {
		return err
	}
	gs, ge, total, err := contentRange(resp)
	if err != nil {
		return err
	}
	if total < 0 {
		return errors.New("Content-Range gives no total size (bytes a-b/*)")
	}
	if total != s.size {
		return fmt.Errorf("%w: Content-Range says the object is %d bytes, it was %d", ErrChanged, total, s.size)
	}
	if etag := resp.Header.Get("Etag"); etag != "" && s.etag != "" && !etagWeakEqual(etag, s.etag) {
		return fmt.Errorf("%w: ETag is %s, was %s", ErrChanged, etag, s.etag)
	}
	if lm := resp.Header.Get("Last-Modified"); s.etag == "" && lm != "" && s.lastMod != "" && !sameTime(lm, s.lastMod) {
		return fmt.Errorf("%w: Last-Modified is %q, was %q", ErrChanged, lm, s.lastMod)
	}
	if gs != start || ge != end {
		return fmt.Errorf("asked bytes %d-%d, the server sent Content-Range bytes %d-%d/%d", start, end, gs, ge, total)
	}
	if want := end - start + 1; resp.ContentLength >= 0 && resp.ContentLength != want {
		return fmt.Errorf("Content-Length %d disagrees with Content-Range bytes %d-%d (%d bytes)", resp.ContentLength, gs, ge, want)
	}
	return nil
}

// checkEncoding refuses a body in any content coding other than identity.
func checkEncoding(resp *http.Response) error {
	for _, v := range resp.Header["Content-Encoding"] {
		if v = strings.TrimSpace(v); v != "" && !strings.EqualFold(v, "identity") {
			return fmt.Errorf("the body has Content-Encoding %q: its bytes are not the object's", netsrc.Clip(v))
		}
	}
	return nil
}

// contentRange parses the single "Content-Range: bytes a-b/n" of a 206 answer; n is -1 for "*".
func contentRange(resp *http.Response) (start, end, total int64, err error) {
	v := resp.Header["Content-Range"]
	switch len(v) {
	case 0:
		return 0, 0, 0, errors.New("206 Partial Content without a Content-Range")
	case 1:
	default:
		return 0, 0, 0, errors.New("206 Partial Content with several Content-Range fields")
	}
	start, end, total, ok := parseContentRange(v[0])
	if !ok {
		return 0, 0, 0, fmt.Errorf("malformed Content-Range %q", netsrc.Clip(v[0]))
	}
	return start, end, total, nil
}

// parseContentRange parses "bytes a-b/n" or "bytes a-b/*" (n = -1) with a <= b < n.
func parseContentRange(v string) (start, end, total int64, ok bool) {
	rest, ok := cutUnit(v)
	if !ok {
		return 0, 0, 0, false
	}
	r, t, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, false
	}
	a, b, ok := strings.Cut(r, "-")
	if !ok {
		return 0, 0, 0, false
	}
	if start, ok = parseDigits(a); !ok {
		return 0, 0, 0, false
	}
	if end, ok = parseDigits(b); !ok || end < start {
		return 0, 0, 0, false
	}
	if t == "*" {
		return start, end, -1, true
	}
	if total, ok = parseDigits(t); !ok || end >= total {
		return 0, 0, 0, false
	}
	return start, end, total, true
}

// unsatisfiedRange parses the "Content-Range: bytes */n" of a 416 answer.
func unsatisfiedRange(resp *http.Response) (int64, error) {
	v := resp.Header.Get("Content-Range")
	rest, ok := cutUnit(v)
	if ok {
		if t, found := strings.CutPrefix(rest, "*/"); found {
			if n, ok := parseDigits(t); ok {
				return n, nil
			}
		}
	}
	if v == "" {
		return 0, errors.New("HTTP 416 Range Not Satisfiable without a Content-Range")
	}
	return 0, fmt.Errorf("HTTP 416 Range Not Satisfiable with a malformed Content-Range %q", netsrc.Clip(v))
}

// cutUnit removes the "bytes " unit (case-insensitive) from a Content-Range value.
func cutUnit(v string) (string, bool) {
	if len(v) < 6 || !strings.EqualFold(v[:6], "bytes ") {
		return "", false
	}
	return v[6:], true
}

// parseDigits parses a non-empty string of ASCII digits that fits an int64.
func parseDigits(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
		if n < 0 {
			return 0, false
		}
	}
	return n, true
}

// etagWeakEqual compares entity tags ignoring the weakness indicator (RFC 9110 weak comparison).
func etagWeakEqual(a, b string) bool {
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}

// sameTime compares two HTTP dates, as times if both parse, else as strings.
func sameTime(a, b string) bool {
	ta, errA := http.ParseTime(a)
	tb, errB := http.ParseTime(b)
	if errA == nil && errB == nil {
		return ta.Equal(tb)
	}
	return a == b
}
