package httpsrc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mirrormem/mirrormem/internal/netsrc"
)

// Defaults for the zero values of Config's tuning fields (the same for both network sources).
const (
	DefaultTimeout  = netsrc.DefaultTimeout
	DefaultRetries  = netsrc.DefaultRetries
	DefaultMaxConns = netsrc.DefaultMaxConns
)

// Config describes an object served over HTTP(S) with Range requests. It is JSON-encodable
// (Marshal, Unmarshal) so that a process can hand it to a re-executed handler process as bytes.
//
// Zero values of Timeout, Retries and MaxConns select the defaults; negative values are refused.
// Size, ETag and LastModified pin the object: if set, New fails with ErrChanged unless the
// server still reports the same size and validators. Source.Config returns a Config with all
// three filled in from the probe, so that every process reading the object reads the same
// version of it.
type Config struct {
	// URL is the object's http or https URL; it may carry secrets in its query string
	// (presigned URLs), which no error message of this package includes.
	URL string `json:"url"`
	// Header holds header fields sent with every request (Authorization, ...). Fields this
	// package sets itself (Range, conditional fields, Accept-Encoding) and hop-by-hop fields
	// are refused. Host, if present, overrides the request's Host.
	Header map[string]string `json:"header,omitempty"`
	// Timeout bounds each request attempt, from dialling (or waiting for a pooled
	// connection) to the last byte of the body. Default 30s. In JSON it is a number of
	// nanoseconds; Unmarshal also accepts a Go duration string such as "30s".
	Timeout time.Duration `json:"timeout,omitempty"`
	// Retries is the number of extra attempts after a transient failure (connection error,
	// timeout, truncated body, HTTP 408, 429, 5xx). Default 3; zero selects the default.
	Retries int `json:"retries,omitempty"`
	// MaxConns is the most connections, busy or idle, kept to the server. Default 8.
	// Further concurrent reads wait for a connection, within their Timeout.
	MaxConns int `json:"max_conns,omitempty"`
	// Size is the object's size in bytes if known; zero means unknown (probed by New).
	Size int64 `json:"size,omitempty"`
	// ETag is the object's entity tag as returned by the server, if known.
	ETag string `json:"etag,omitempty"`
	// LastModified is the object's Last-Modified header value, if known.
	LastModified string `json:"last_modified,omitempty"`
}

// Marshal validates c and encodes it as JSON.
func (c Config) Marshal() ([]byte, error) { return netsrc.Marshal(c) }

// Unmarshal decodes a Config encoded by Marshal, as strictly as netsrc.DecodeStrict, and
// validates it. Its timeout may also be a Go duration string such as "30s".
func Unmarshal(b []byte) (Config, error) {
	// wire is Config with a timeout that may be a number of nanoseconds or a duration string.
	type wire struct {
		Config
		Timeout json.RawMessage `json:"timeout,omitempty"`
	}
	var w wire
	if err := netsrc.DecodeStrict(b, &w); err != nil {
		return Config{}, fmt.Errorf("httpsrc: config: %w", err)
	}
	c := w.Config
	if t := bytes.TrimSpace(w.Timeout); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		if t[0] == '"' {
			var s string
			if err := json.Unmarshal(t, &s); err != nil {
				return Config{}, fmt.Errorf("httpsrc: config: timeout: %w", err)
			}
			d, err := time.ParseDuration(s)
			if err != nil {
				return Config{}, fmt.Errorf("httpsrc: config: timeout: %w", err)
			}
			c.Timeout = d
		} else {
			var n int64
			if err := json.Unmarshal(t, &n); err != nil {
				return Config{}, fmt.Errorf("httpsrc: config: timeout %s is neither a number of nanoseconds nor a duration string", t)
			}
			c.Timeout = time.Duration(n)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// refusedHeaders are header fields that this package sets itself or that would break the
// exchange (hop-by-hop fields, framing, compression).
var refusedHeaders = map[string]bool{
	"Range": true, "If-Range": true, "If-Match": true, "If-None-Match": true,
	"If-Modified-Since": true, "If-Unmodified-Since": true, "Accept-Encoding": true,
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true,
	"Te": true, "Trailer": true, "Upgrade": true, "Content-Length": true, "Expect": true,
}

// Validate reports the first problem of c, or nil. Its messages never include the URL's query
// string, user information or header values.
func (c Config) Validate() error {
	if _, err := parseURL(c.URL); err != nil {
		return err
	}
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("httpsrc: config: timeout %v is negative", c.Timeout)
	case c.Retries < 0:
		return fmt.Errorf("httpsrc: config: retries %d is negative", c.Retries)
	case c.MaxConns < 0:
		return fmt.Errorf("httpsrc: config: max_conns %d is negative", c.MaxConns)
	case c.Size < 0:
		return fmt.Errorf("httpsrc: config: size %d is negative", c.Size)
	}
	if err := checkFieldValue("etag", c.ETag); err != nil {
		return err
	}
	if c.ETag != "" && !strings.HasSuffix(c.ETag, `"`) {
		return fmt.Errorf(`httpsrc: config: etag %q is not an entity tag ("..." or W/"...")`, c.ETag)
	}
	if err := checkFieldValue("last_modified", c.LastModified); err != nil {
		return err
	}
	seen := make(map[string]bool, len(c.Header))
	for name, value := range c.Header {
		if !isToken(name) {
			return fmt.Errorf("httpsrc: config: header name %q is not a valid field name", name)
		}
		canon := http.CanonicalHeaderKey(name)
		if refusedHeaders[canon] {
			return fmt.Errorf("httpsrc: config: header %s is set by the source itself or breaks range requests; remove it", canon)
		}
		if seen[canon] {
			return fmt.Errorf("httpsrc: config: header %s is given twice (names differing only in case)", canon)
		}
		seen[canon] = true
		if err := checkFieldValue("header "+canon, value); err != nil {
			return err
		}
	}
	return nil
}

// checkFieldValue refuses control characters (CR, LF, NUL, ...) in a header field value,
// without quoting the value, which may be a secret.
func checkFieldValue(what, v string) error {
	for i := 0; i < len(v); i++ {
		if b := v[i]; (b < ' ' && b != '\t') || b == 0x7f {
			return fmt.Errorf("httpsrc: config: %s contains a control character (byte %d)", what, i)
		}
	}
	return nil
}

// parseURL parses and checks an object URL. Its errors name at most the scheme.
func parseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("httpsrc: config: url is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL, query included: report only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("httpsrc: config: url does not parse: %v", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		if u.Scheme == "" {
			return nil, errors.New("httpsrc: config: url has no scheme (want http:// or https://)")
		}
		return nil, fmt.Errorf("httpsrc: config: url scheme %q is not http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("httpsrc: config: url has no host")
	}
	if u.Fragment != "" || u.RawFragment != "" {
		u.Fragment, u.RawFragment = "", ""
	}
	return u, nil
}

// redact returns scheme://host/path of u: no user information, no query, no fragment.
func redact(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	return r.String()
}

// isToken reports whether s is a non-empty RFC 9110 token (a valid field name).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0:
		default:
			return false
		}
	}
	return true
}

// tuning returns c's tuning with the defaults in place of zero values.
func (c Config) tuning() netsrc.Tuning {
	return netsrc.Tuning{Timeout: c.Timeout, Retries: c.Retries, MaxConns: c.MaxConns}.WithDefaults()
}
