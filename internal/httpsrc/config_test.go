package httpsrc

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestConfigRoundTrip: Marshal then Unmarshal gives the same Config; a timeout may also be a
// duration string.
func TestConfigRoundTrip(t *testing.T) {
	c := Config{
		URL:          "https://bucket.example.com/dir/obj.bin?X-Amz-Signature=abc&X-Amz-Expires=60",
		Header:       map[string]string{"Authorization": "Bearer t0ken", "x-custom": "1"},
		Timeout:      1500 * time.Millisecond,
		Retries:      5,
		MaxConns:     16,
		Size:         1 << 40,
		ETag:         `"9b2cf535f27731c974343645a3985328"`,
		LastModified: "Wed, 21 Oct 2015 07:28:00 GMT",
	}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, c)
	}
	minimal, err := Config{URL: "http://h/o"}.Marshal()
	if err != nil || string(minimal) != `{"url":"http://h/o"}` {
		t.Fatalf("minimal config marshals to %s, %v", minimal, err)
	}
	got, err = Unmarshal([]byte(`{"url":"http://h/o","timeout":"250ms"}`))
	if err != nil || got.Timeout != 250*time.Millisecond {
		t.Fatalf("timeout as a string: %+v, %v", got, err)
	}
	got, err = Unmarshal([]byte(`{"url":"http://h/o","timeout":null}`))
	if err != nil || got.Timeout != 0 {
		t.Fatalf("timeout null: %+v, %v", got, err)
	}
}

// TestConfigInvalid: bad configs are refused by Validate, Marshal, Unmarshal and New with a clear
// message that reveals no secret.
func TestConfigInvalid(t *testing.T) {
	const u = "https://h.example/o?sig=SECRET"
	for _, tc := range []struct {
		name string
		c    Config
		want string
	}{
		{"EmptyURL", Config{}, "url is empty"},
		{"NoScheme", Config{URL: "h.example/o?sig=SECRET"}, "no scheme"},
		{"BadScheme", Config{URL: "ftp://h.example/o?sig=SECRET"}, `scheme "ftp" is not http or https`},
		{"FileScheme", Config{URL: "file:///etc/passwd"}, `scheme "file"`},
		{"NoHost", Config{URL: "http:///o?sig=SECRET"}, "no host"},
		{"Unparsable", Config{URL: "http://h.example/%zz?sig=SECRET"}, "does not parse"},
		{"ControlChar", Config{URL: "http://h.example/o\n?sig=SECRET"}, "does not parse"},
		{"NegativeTimeout", Config{URL: u, Timeout: -time.Second}, "timeout -1s is negative"},
		{"NegativeRetries", Config{URL: u, Retries: -1}, "retries -1 is negative"},
		{"NegativeMaxConns", Config{URL: u, MaxConns: -2}, "max_conns -2 is negative"},
		{"NegativeSize", Config{URL: u, Size: -3}, "size -3 is negative"},
		{"RangeHeader", Config{URL: u, Header: map[string]string{"range": "bytes=0-1"}}, "header Range is set by the source"},
		{"IfMatchHeader", Config{URL: u, Header: map[string]string{"If-Match": "*"}}, "header If-Match"},
		{"BadHeaderName", Config{URL: u, Header: map[string]string{"X Bad": "v"}}, `header name "X Bad" is not a valid`},
		{"EmptyHeaderName", Config{URL: u, Header: map[string]string{"": "v"}}, "header name"},
		{"HeaderInjection", Config{URL: u, Header: map[string]string{"Authorization": "SECRET\r\nX-Evil: 1"}}, "header Authorization contains a control character"},
		{"DuplicateHeader", Config{URL: u, Header: map[string]string{"x-a": "SECRET", "X-A": "SECRET"}}, "given twice"},
		{"BadETag", Config{URL: u, ETag: "abc"}, "not an entity tag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s accepted %+v", what, tc.c)
				}
				if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "httpsrc: config: ") {
					t.Errorf("%s: %q does not say %q", what, err, tc.want)
				}
				if strings.Contains(err.Error(), "SECRET") {
					t.Errorf("%s: %q reveals a secret", what, err)
				}
			}
			check("Validate", tc.c.Validate())
			_, err := tc.c.Marshal()
			check("Marshal", err)
			_, err = New(tc.c)
			check("New", err)
		})
	}
	for _, tc := range []struct{ json, want string }{
		{`{"url":"http://h/o","retries":-1}`, "retries -1 is negative"},
		{`{"url":"http://h/o","timeout":"soon"}`, "timeout"},
		{`{"url":"http://h/o","timeout":1.5}`, "timeout 1.5 is neither"},
		{`{"url":"http://h/o","max_conn":4}`, `unknown field "max_conn"`},
		{`{"url":"http://h/o"} {}`, "trailing data"},
		{`{"url":`, "unexpected EOF"},
		{`{}`, "url is empty"},
	} {
		if _, err := Unmarshal([]byte(tc.json)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Unmarshal(%s) = %v, want an error saying %q", tc.json, err, tc.want)
		}
	}
}
