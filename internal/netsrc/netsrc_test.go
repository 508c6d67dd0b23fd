package netsrc

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestTuningWithDefaults(t *testing.T) {
	if got, want := (Tuning{}).WithDefaults(), (Tuning{DefaultTimeout, DefaultRetries, DefaultMaxConns}); got != want {
		t.Errorf("zero Tuning with defaults = %+v, want %+v", got, want)
	}
	set := Tuning{Timeout: time.Second, Retries: 1, MaxConns: 2}
	if got := set.WithDefaults(); got != set {
		t.Errorf("%+v with defaults = %+v: set values must stay", set, got)
	}
}

var (
	errTransient = errors.New("connection reset")
	errFinal     = errors.New("HTTP 404")
	errClosed    = errors.New("test: closed")
)

// TestRetryDo: Do stops at the first success, at a failure that is not transient, after
// Retries+1 failures, and when Done closes; only then does its error wrap Closed.
func TestRetryDo(t *testing.T) {
	open := make(chan struct{})
	shut := make(chan struct{})
	close(shut)
	for _, tc := range []struct {
		name     string
		retries  int
		done     chan struct{}
		fails    []error // the errors of the first attempts; later ones succeed
		attempts int
		want     error
	}{
		{"FirstTry", 3, open, nil, 1, nil},
		{"SecondTry", 3, open, []error{errTransient}, 2, nil},
		{"NotTransient", 3, open, []error{errTransient, errFinal}, 2, errFinal},
		{"Exhausted", 2, open, []error{errTransient, errTransient, errTransient, errTransient}, 3, errTransient},
		{"NoRetries", 0, open, []error{errTransient}, 1, errTransient},
		{"Closed", 3, shut, []error{errTransient, errTransient}, 1, errClosed},
		{"ClosedAlreadySaid", 3, shut, []error{errClosed}, 1, errClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			r := Retry{Retries: tc.retries, Done: tc.done, Closed: errClosed}
			n, err := r.Do(func(attempt int) (bool, error) {
				calls++
				if attempt != calls {
					t.Errorf("call %d has attempt number %d", calls, attempt)
				}
				if attempt > len(tc.fails) {
					return false, nil
				}
				err := tc.fails[attempt-1]
				return err == errTransient, err
			})
			if n != tc.attempts || calls != tc.attempts || !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Do = %d, %v after %d calls; want %d, %v", n, err, calls, tc.attempts, tc.want)
			}
			if tc.name == "Closed" && !strings.Contains(err.Error(), errTransient.Error()) {
				t.Errorf("%q does not say which failure Close interrupted", err)
			}
			if tc.name == "ClosedAlreadySaid" && err != errClosed {
				t.Errorf("%q: Closed wrapped around itself", err)
			}
		})
	}
}

// TestBackoff: the waits double from 10ms up to 500ms, jittered down to half and no further.
func TestBackoff(t *testing.T) {
	for k := 1; k <= 12; k++ {
		hi := min(500*time.Millisecond, 10*time.Millisecond<<min(k-1, 6))
		for range 200 {
			if d := backoff(k); d < hi/2 || d > hi {
				t.Fatalf("backoff(%d) = %v, want %v to %v", k, d, hi/2, hi)
			}
		}
	}
}

type config struct {
	Name string `json:"name"`
	N    int    `json:"n,omitempty"`
}

func (c config) Validate() error {
	if c.N < 0 {
		return errors.New("n is negative")
	}
	return nil
}

// TestConfigEncoding: Marshal refuses what Validate refuses; DecodeStrict takes what Marshal
// wrote and refuses unknown fields, trailing data and malformed JSON.
func TestConfigEncoding(t *testing.T) {
	if _, err := Marshal(config{N: -1}); err == nil || err.Error() != "n is negative" {
		t.Errorf("Marshal of an invalid config: %v", err)
	}
	b, err := Marshal(config{Name: "a", N: 2})
	if err != nil {
		t.Fatal(err)
	}
	var c config
	if err := DecodeStrict(b, &c); err != nil || c != (config{"a", 2}) {
		t.Fatalf("DecodeStrict(%s) = %+v, %v", b, c, err)
	}
	for in, want := range map[string]string{
		`{"name":"a","nn":1}`: `unknown field "nn"`,
		`{"name":"a"} {}`:     "trailing data",
		`{"name":"a"} x`:      "trailing data",
		`{"name":`:            "unexpected EOF",
		`[]`:                  "cannot unmarshal array",
	} {
		if err := DecodeStrict([]byte(in), &c); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeStrict(%s) = %v, want an error saying %q", in, err, want)
		}
	}
}

func TestMessages(t *testing.T) {
	if a, b := Attempts(1), Attempts(3); a != "1 attempt" || b != "3 attempts" {
		t.Errorf("Attempts(1), Attempts(3) = %q, %q", a, b)
	}
	long := strings.Repeat("x", 200)
	if c := Clip(long); len(c) != 83 || !strings.HasSuffix(c, "...") {
		t.Errorf("Clip of 200 bytes = %d bytes %q", len(c), c)
	}
	if c := Clip("short"); c != "short" {
		t.Errorf("Clip(short) = %q", c)
	}
}
