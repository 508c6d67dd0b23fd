// Package netsrc holds what this module's two network page sources share, so that it is
// written once: internal/httpsrc (HTTP Range requests) and internal/pagesrv (the TCP page
// protocol). They take the same tuning (Tuning: a timeout per attempt, a number of retries,
// a connection pool size) with the same defaults, retry transient failures the same way
// (Retry: a bounded, jittered backoff that Close interrupts), encode their configs the same
// way for a handler process (Marshal and DecodeStrict: validated JSON, strictly decoded), and
// word their errors alike (Attempts, Clip).
//
// What differs between the sources stays in their packages: which fields a config has and
// which values it accepts, what a transient failure is, and the errors' prefixes.
package netsrc

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"time"
)

// Defaults that Tuning.WithDefaults puts in place of zero values.
const (
	DefaultTimeout  = 30 * time.Second
	DefaultRetries  = 3
	DefaultMaxConns = 8
)

// Tuning is the tuning of a network source, zero values meaning the defaults.
type Tuning struct {
	Timeout  time.Duration // bounds each attempt at a request
	Retries  int           // extra attempts after a transient failure
	MaxConns int           // connections, busy or idle, kept to the server
}

// WithDefaults returns t with the defaults in place of its zero values.
func (t Tuning) WithDefaults() Tuning {
	if t.Timeout == 0 {
		t.Timeout = DefaultTimeout
	}
	if t.Retries == 0 {
		t.Retries = DefaultRetries
	}
	if t.MaxConns == 0 {
		t.MaxConns = DefaultMaxConns
	}
	return t
}

// Validator is a config that can say what is wrong with it.
type Validator interface {
	Validate() error
}

// Marshal validates c and encodes it as JSON: a config that its reader would refuse is
// refused here, in the process that made it, where the error can still be acted on.
func Marshal(c Validator) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(c)
}

// errTrailing is DecodeStrict's error for bytes after the JSON object.
var errTrailing = errors.New("trailing data after the JSON object")

// DecodeStrict decodes the JSON object in b into v, refusing unknown fields and trailing data,
// so that a misspelt field name is an error rather than a silently ignored setting. Its errors
// carry no prefix: the caller adds its own.
func DecodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errTrailing
	}
	return nil
}

// Attempts returns "1 attempt" or "n attempts", for an error message.
func Attempts(n int) string {
	if n == 1 {
		return "1 attempt"
	}
	return strconv.Itoa(n) + " attempts"
}

// Clip shortens a value that came from the peer (a header field, a greeting) for an error
// message, so that a hostile or broken server cannot make the message long.
func Clip(v string) string {
	if len(v) > 80 {
		return v[:80] + "..."
	}
	return v
}
