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

// The peer serving the sources suite's HTTP object: mapper.Handle given an io.ReaderAt that does
// one HTTP range request per ReadAt, as its S3 example gives it a minio object. It runs, like
// every peer row, in a child process, one run per child: its handler is a goroutine of the
// process whose memory it serves, so the pages are touched there by one goroutine with a plain
// loop, with a P left for the handler and its HTTP connection, and a child that hangs anyway
// is killed after peerTimeout.

func init() { children["peer-http"] = peerHTTPChild }

type peerHTTPArgs struct {
	URL  string `json:"url"`
	Size int    `json:"size"`
}

// peerHTTPRow is the peer serving the first n bytes of env's HTTP object, sequential touch,
// 4 KiB per fault.
func peerHTTPRow(env *sourcesEnv, name string, n int) row {
	return peerChildRow(name, "peer-http", 1, func(uint64) any {
		return peerHTTPArgs{URL: env.url, Size: n}
	}, func(ns int64) float64 { return float64(ns) / 1e3 / float64(n/pageSize) })
}

// rangeReader is an io.ReaderAt over an HTTP object: one range request per ReadAt, on the
// client's keep-alive connections.
type rangeReader struct {
	url    string
	client *http.Client
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

func peerHTTPChild(arg string) int {
	var a peerHTTPArgs
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		out.Encode(peerResult{Errors: err.Error()})
		return 1
	}
	if err := json.Unmarshal([]byte(arg), &a); err != nil || a.Size <= 0 || a.Size%pageSize != 0 || a.URL == "" {
		return fail(fmt.Errorf("bad child arguments %q", arg))
	}
	if p := runtime.GOMAXPROCS(0); p < 2 {
		return fail(fmt.Errorf("child runs with GOMAXPROCS=%d: the handler would have no P of its own", p))
	}
	image := makeImage(a.Size)
	b, u, start, err := mapper.Register(a.Size)
	if err != nil {
		return fail(fmt.Errorf("mapper.Register: %w", err))
	}
	src := &rangeReader{url: a.URL, client: &http.Client{Timeout: 30 * time.Second}}
	handlerErr := make(chan error, 1)
	go func() { handlerErr <- mapper.Handle(u, start, src) }()
	first := make([]uint64, a.Size/pageSize)
	type result struct {
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := readPages(b, pageOrder(len(first), false, 0), first)
		done <- result{d, err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			r.err = checkImage(b, image, first)
		}
		if r.err != nil {
			return fail(r.err)
		}
		out.Encode(peerResult{NS: r.d.Nanoseconds()})
		return 0
	case err := <-handlerErr:
		// The toucher is stuck for good; report and let the exit end it.
		return fail(fmt.Errorf("mapper.Handle returned: %v", err))
	}
}
