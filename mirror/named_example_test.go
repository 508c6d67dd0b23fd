package mirror_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// A source written in Go is registered from an init function, under a name; the handler
// process (this program re-executed) builds it from the configuration and serves it.
func init() {
	mirror.RegisterSource("example/repeat", func(config []byte) (io.ReaderAt, error) {
		if len(config) == 0 {
			return nil, fmt.Errorf("repeat: empty pattern")
		}
		return strings.NewReader(strings.Repeat(string(config), 1<<20/len(config))), nil
	})
}

// Serve a pair from a registered Go source: the views may be touched any way, copy included.
func ExampleNamedSource() {
	r, err := alloc.Shared(16 * alloc.PageSize())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.ServeFaults(mirror.NamedSource("example/repeat", []byte("abc"))))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	buf := make([]byte, 9)
	copy(buf, p.Mirror()[3*4096:]) // a page filled by the handler process on first touch
	fmt.Println(string(buf), p.FaultHandler())
	// Output: abcabcabc process
}

// Serve a pair from an object on an HTTP server, fetched with range requests as pages are
// touched. The server must not be this program, whose goroutines may all be waiting in
// faults; this example's is, so it fills the pages with Populate, a system call, during which
// the calling goroutine holds no P and the server can answer.
func ExampleHTTPSource() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, req, "", time.Time{}, strings.NewReader(strings.Repeat("0123456789", 10000)))
	}))
	defer srv.Close()
	r, err := alloc.Shared(32 * alloc.PageSize())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.ServeFaults(mirror.HTTPSource(srv.URL+"/image", mirror.HTTPOptions{})))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	if err := p.Populate(0, len(p.Original())); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(p.Original()[99990:100000]), p.Mirror()[100000]) // the object's last bytes, then zeros
	// Output: 0123456789 0
}
