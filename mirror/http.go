package mirror

import (
	"fmt"
	"io"
	"time"

	"github.com/mirrormem/mirrormem/internal/httpsrc"
)

// HTTPOptions tune HTTPSource. Zero values select the defaults.
type HTTPOptions struct {
	Header   map[string]string // sent with every request (Authorization, ...)
	Timeout  time.Duration     // per request attempt; default 30 s
	Retries  int               // extra attempts after a transient failure; default 3
	MaxConns int               // keep-alive connections to the server; default 8
}

// httpSourceName is the name the library registers its HTTP range source under.
const httpSourceName = "mirrormem/http"

func init() {
	RegisterSource(httpSourceName, func(config []byte) (io.ReaderAt, error) {
		cfg, err := httpsrc.Unmarshal(config)
		if err != nil {
			return nil, err
		}
		return httpsrc.New(cfg)
	})
}

// HTTPSource serves pages from the object at url with HTTP range requests, from a handler
// process (see RegisterSource): any HTTP/1.1 server with Range support will do (an object
// store through a presigned URL, a CDN, nginx, net/http). Give it to ServeFaults.
//
// Mirror asks the server for the object's size and version (ETag or Last-Modified) once, and
// the handler process fetches that version only: if the object changes meanwhile, or the
// server fails, times out or answers anything but the exact bytes asked for (after the retries
// of transient failures), the page is poisoned and the access raises SIGBUS, never reading
// zeros or another version. A fault-around window is one request, and several windows are
// fetched at once over a pool of keep-alive connections. Bytes past the object's end read as
// zeros. The server must not be this program: its goroutines may all be waiting in faults.
func HTTPSource(url string, o HTTPOptions) io.ReaderAt {
	cfg := httpsrc.Config{URL: url, Header: o.Header, Timeout: o.Timeout, Retries: o.Retries, MaxConns: o.MaxConns}
	n := &namedSource{name: httpSourceName}
	n.prepare = func() error {
		// The version is pinned here, once: the handler processes fetch that one only.
		s, err := httpsrc.New(cfg)
		if err != nil {
			return fmt.Errorf("HTTPSource: %w", err)
		}
		if n.config, err = s.Config().Marshal(); err != nil {
			s.Close()
			return fmt.Errorf("HTTPSource: %w", err)
		}
		n.built = s // read through by Verify in this process
		return nil
	}
	return n
}
