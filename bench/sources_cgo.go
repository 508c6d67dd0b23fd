//go:build cgo

package main

import (
	"fmt"
	"time"
)

// The peer serving the sources suite's HTTP object, sequentially, in a child process (see
// peerServe).

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

func peerHTTPChild(arg string) int {
	var a peerHTTPArgs
	return peerChildMain(arg, &a, func() (time.Duration, error) {
		if a.Size <= 0 || a.Size%pageSize != 0 || a.URL == "" {
			return 0, fmt.Errorf("bad child arguments %+v", a)
		}
		order := pageOrder(a.Size/pageSize, false, 0)
		r, err := peerServe(a.Size, newRangeReader(a.URL), order)
		if err != nil {
			return 0, err
		}
		first := make([]uint64, len(order)) // by page, as checkImage reads it
		for i, pg := range order {
			first[pg] = r.first[i]
		}
		return r.touch, checkImage(r.view, makeImage(a.Size), first)
	})
}
