package migrate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mirrormem/mirrormem/mirror"
)

// The destination's memory is a mirror pair served by the library: its faults are served by a
// handler process (this program re-executed, see mirror.RegisterSource) from a storeSource,
// which reads the pages the destination holds from its store and the others from the source.

// storeSourceName is the name the example registers its source under.
const storeSourceName = "mirrormem-example/postcopy-store"

func init() {
	mirror.RegisterSource(storeSourceName, openStore)
}

// Page states, one byte per page after the image in the store.
const (
	pageNone  = 0 // nothing received: fetch it from the source
	pageHave  = 1 // the store holds the page's final bytes
	pageStale = 2 // written at the source after the pre-copy: fetch it, unless a push brings it
)

// storeConfig tells a handler process where the pages are.
type storeConfig struct {
	Store string // the destination's store: /proc/PID/fd/N of its memfd
	Size  int64  // bytes of the image; the page states follow them in the store
	Page  int64
	TCP   string `json:",omitempty"` // the source's page server (mirror.ServePages), or
	HTTP  string `json:",omitempty"` // the URL of the image, served with Range support
}

// storeSource is what the handler processes serve the destination's faults from.
type storeSource struct {
	store  *os.File
	remote io.ReaderAt // mirror.TCPSource or mirror.HTTPSource, read in the handler process
	size   int64
	page   int64
}

func openStore(config []byte) (io.ReaderAt, error) {
	var c storeConfig
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, fmt.Errorf("postcopy store config: %w", err)
	}
	f, err := os.Open(c.Store)
	if err != nil {
		return nil, fmt.Errorf("postcopy store: %w", err)
	}
	s := &storeSource{store: f, size: c.Size, page: c.Page}
	if c.HTTP != "" {
		s.remote = mirror.HTTPSource(c.HTTP, mirror.HTTPOptions{Timeout: demandTimeout})
	} else {
		s.remote = mirror.TCPSource(c.TCP, mirror.TCPOptions{Timeout: demandTimeout})
	}
	return s, nil
}

// ReadAt reads whole pages of the image (a fault-around window): the runs of pages the store
// holds from it, the other runs from the source, one request each.
func (s *storeSource) ReadAt(p []byte, off int64) (int, error) {
	if off%s.page != 0 || int64(len(p))%s.page != 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("postcopy store: %d bytes at %d: not whole pages of the image", len(p), off)
	}
	states := make([]byte, int64(len(p))/s.page)
	if _, err := s.store.ReadAt(states, s.size+off/s.page); err != nil {
		return 0, fmt.Errorf("postcopy store: page states: %w", err)
	}
	for i := 0; i < len(states); {
		have := states[i] == pageHave
		j := i + 1
		for j < len(states) && (states[j] == pageHave) == have {
			j++
		}
		from := s.remote
		if have {
			from = s.store
		}
		a, b := int64(i)*s.page, int64(j)*s.page
		if _, err := from.ReadAt(p[a:b], off+a); err != nil {
			// Not wrapped: an error that wraps io.EOF (an HTTP connection that closed) would
			// read as the end of the source, whose pages the library fills with zeros.
			return 0, errors.New(err.Error())
		}
		i = j
	}
	return len(p), nil
}
