//go:build cgo

package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/loopholelabs/userfaultfd-go/pkg/mapper"
)

// The peer in the restore suite: mapper.Handle serving the image through the same slow server,
// one range request per 4 KiB fault, touched in the same noisy order as the library's rows, in a
// child process (one run per child), timed from mapper.Register to the last touch.

func init() { children["peer-restore"] = peerRestoreChild }

type peerRestoreArgs struct {
	URL     string `json:"url"`
	Size    int    `json:"size"`
	WSBytes int    `json:"ws_bytes"`
	WSeed   uint64 `json:"wseed"`
	Noise   uint64 `json:"noise"`
}

func peerRestoreRow(srv *restoreServer, size, wsBytes int, wseed uint64) row {
	r := peerChildRow(rowRestorePeer, "peer-restore", 1, func(seed uint64) any {
		return peerRestoreArgs{URL: srv.url, Size: size, WSBytes: wsBytes, WSeed: wseed, Noise: 5000 + seed}
	}, func(ns int64) float64 { return float64(ns) / 1e6 })
	r.params = map[string]any{"handler": "userfaultfd-go mapper.Handle (a goroutine of a child process; private anonymous memory)",
		"memory": memAnon, "bytes_per_fault": pageSize}
	return r
}

func peerRestoreChild(arg string) int {
	var a peerRestoreArgs
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		out.Encode(peerResult{Errors: err.Error()})
		return 1
	}
	if err := json.Unmarshal([]byte(arg), &a); err != nil || a.Size <= 0 || a.Size%pageSize != 0 || a.URL == "" || a.WSBytes <= 0 {
		return fail(fmt.Errorf("bad child arguments %q", arg))
	}
	if p := runtime.GOMAXPROCS(0); p < 2 {
		return fail(fmt.Errorf("child runs with GOMAXPROCS=%d: the handler would have no P of its own", p))
	}
	order := newRestoreWorkload(a.Size, a.WSBytes, a.WSeed).order(a.Noise)
	t0 := time.Now()
	b, u, start, err := mapper.Register(a.Size)
	if err != nil {
		return fail(fmt.Errorf("mapper.Register: %w", err))
	}
	src := &rangeReader{url: a.URL, client: &http.Client{Timeout: 30 * time.Second}}
	handlerErr := make(chan error, 1)
	go func() { handlerErr <- mapper.Handle(u, start, src) }()
	first := make([]uint64, len(order))
	type result struct {
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	go func() {
		var faults []time.Duration
		err := timedTouch(b, order, first, &faults)
		done <- result{time.Since(t0), err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			image := makeImage(a.Size)
			for i, pg := range order {
				if want := binary.LittleEndian.Uint64(image[int(pg)*pageSize:]); first[i] != want {
					r.err = fmt.Errorf("page %d: read %#x, want %#x: wrong data", pg, first[i], want)
					break
				}
			}
		}
		if r.err != nil {
			return fail(r.err)
		}
		out.Encode(peerResult{NS: r.d.Nanoseconds()})
		return 0
	case err := <-handlerErr:
		return fail(fmt.Errorf("mapper.Handle returned: %v", err))
	}
}
