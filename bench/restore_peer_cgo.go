//go:build cgo

package main

import (
	"encoding/binary"
	"fmt"
	"time"
)

// The peer in the restore suite: mapper.Handle serving the image through the same slow server,
// one range request per 4 KiB fault, touched in the same noisy order as the library's rows, in a
// child process (one run per child, see peerServe), timed from mapper.Register to the last touch.

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
	r.params = map[string]any{"handler": "userfaultfd-go mapper.Handle (a goroutine of a child process; private anonymous memory; pages touched from C)",
		"memory": memAnon, "bytes_per_fault": pageSize}
	return r
}

func peerRestoreChild(arg string) int {
	var a peerRestoreArgs
	return peerChildMain(arg, &a, func() (time.Duration, error) {
		if a.Size <= 0 || a.Size%pageSize != 0 || a.URL == "" || a.WSBytes <= 0 {
			return 0, fmt.Errorf("bad child arguments %+v", a)
		}
		order := newRestoreWorkload(a.Size, a.WSBytes, a.WSeed).order(a.Noise)
		r, err := peerServe(a.Size, newRangeReader(a.URL), order)
		if err != nil {
			return 0, err
		}
		image := makeImage(a.Size)
		for i, pg := range order {
			if want := binary.LittleEndian.Uint64(image[int(pg)*pageSize:]); r.first[i] != want {
				return 0, fmt.Errorf("page %d: read %#x, want %#x: wrong data", pg, r.first[i], want)
			}
		}
		return r.total, nil
	})
}
