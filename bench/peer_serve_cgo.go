//go:build cgo

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/loopholelabs/userfaultfd-go/pkg/mapper"
)

// The body the peer's HTTP children share (the sources suite's and the restore suite's):
// mapper.Register maps the memory, mapper.Handle serves it on a goroutine from an io.ReaderAt
// that does one HTTP range request per ReadAt (as userfaultfd-go's S3 example gives it a minio
// object), and the pages are touched from C (cTouch says why). One run per child; a child
// that hangs anyway is killed after peerTimeout.

// rangeReader is an io.ReaderAt over an HTTP object: one range request per ReadAt, on the
// client's keep-alive connections.
type rangeReader struct {
	url    string
	client *http.Client
}

func newRangeReader(url string) *rangeReader {
	return &rangeReader{url: url, client: &http.Client{Timeout: 30 * time.Second}}
}

func (r *rangeReader) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	req, err := http.NewRequest(http.MethodGet, r.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1))
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		return 0, fmt.Errorf("range request at %d: %s", off, resp.Status)
	}
	n, err := io.ReadFull(resp.Body, p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF // the object ends inside p
	}
	return n, err
}

// peerServed is what one run of the peer did.
type peerServed struct {
	view  []byte        // the memory mapper.Register mapped, every page of order in place
	first []uint64      // first[i]: the first 8 bytes of page order[i], as the touch read them
	touch time.Duration // the touch alone
	total time.Duration // from before mapper.Register to the last touch
}

// peerServe maps size bytes with mapper.Register, serves them from src with mapper.Handle, and
// touches the pages of order with cTouch. It fails if the handler returns (the toucher is then
// stuck for good: the child's exit ends it).
func peerServe(size int, src io.ReaderAt, order []uint32) (peerServed, error) {
	if p := runtime.GOMAXPROCS(0); p < 2 {
		return peerServed{}, fmt.Errorf("child runs with GOMAXPROCS=%d: the handler would have no P of its own", p)
	}
	t0 := time.Now()
	b, u, start, err := mapper.Register(size)
	if err != nil {
		return peerServed{}, fmt.Errorf("mapper.Register: %w", err)
	}
	handlerErr := make(chan error, 1)
	go func() { handlerErr <- mapper.Handle(u, start, src) }()
	res := peerServed{view: b, first: make([]uint64, len(order))}
	done := make(chan struct{})
	go func() {
		res.touch = cTouch(b, order, res.first)
		res.total = time.Since(t0)
		close(done)
	}()
	select {
	case <-done:
		return res, nil
	case err := <-handlerErr:
		return peerServed{}, fmt.Errorf("mapper.Handle returned: %v", err)
	}
}

// peerChildMain runs a peer child: it decodes arg into args, calls run, and writes the
// nanoseconds run returns, or its error, as the child's JSON result.
func peerChildMain(arg string, args any, run func() (time.Duration, error)) int {
	out := json.NewEncoder(os.Stdout)
	err := json.Unmarshal([]byte(arg), args)
	var d time.Duration
	if err != nil {
		err = fmt.Errorf("bad child arguments %q: %v", arg, err)
	} else {
		d, err = run()
	}
	if err != nil {
		out.Encode(peerResult{Errors: err.Error()})
		return 1
	}
	out.Encode(peerResult{NS: d.Nanoseconds()})
	return 0
}
