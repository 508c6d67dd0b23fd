//go:build cgo

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/loopholelabs/userfaultfd-go/pkg/mapper"
)

// The peer, loopholelabs/userfaultfd-go: mapper.Register maps private anonymous memory and
// registers it in MISSING mode; mapper.Handle serves one 4 KiB UFFDIO_COPY per fault from an
// io.ReaderAt and loops forever. It runs in a child process, one run per child.

const (
	peerTimeout  = 90 * time.Second
	peerAttempts = 3
)

func init() { children["peer"] = peerChild }

type peerArgs struct {
	Size    int    `json:"size"`
	Threads int    `json:"threads"`
	Random  bool   `json:"random"`
	Seed    uint64 `json:"seed"`
}

type peerResult struct {
	NS     int64  `json:"ns"`
	Errors string `json:"error,omitempty"`
}

// peerRow runs the peer on a 4 KiB COPY case. Only that case exists for the peer: it has no
// zero-page, minor or fault-around mode.
func peerRow(fc faultCase, _ int, _ []byte) row {
	return peerChildRow(rowPeer, "peer", fc.threads, func(seed uint64) any {
		return peerArgs{Size: fc.size, Threads: fc.threads, Random: fc.random, Seed: seed}
	}, func(ns int64) float64 { return fc.usPerPage(time.Duration(ns)) })
}

// peerChildRow is a row of the peer measured in the child process registered as child, one
// child per run, with the JSON of args(seed) as its arguments and threads faulting goroutines;
// perPage turns the nanoseconds the child reports into the row's figure.
func peerChildRow(name, child string, threads int, args func(seed uint64) any, perPage func(ns int64) float64) row {
	seed := uint64(1000)
	var attempts, failed int
	var lastErr error
	return row{name: name, run: func() (float64, error) {
		// The peer's handler returns on the first EEXIST, which the kernel produces whenever a
		// fault is delivered twice (a faulting thread interrupted by a signal, two threads on
		// one page). Such a run is retried, up to peerAttempts times, and counted.
		for range peerAttempts {
			seed++
			attempts++
			a, err := json.Marshal(args(seed))
			if err != nil {
				return 0, err
			}
			ns, err := runPeerChild(child, string(a), threads, peerTimeout)
			if err == nil {
				return perPage(ns), nil
			}
			failed++
			lastErr = err
		}
		return 0, fmt.Errorf("%d of %d attempts failed, the last with: %v", failed, attempts, lastErr)
	}, note: func() string {
		if failed == 0 {
			return ""
		}
		return fmt.Sprintf("%d of %d runs of the peer failed and were retried (last error: %v)", failed, attempts, lastErr)
	}}
}

// runPeerChild runs one measurement of the peer in the child process registered as child. The
// child gets one P more than it has faulting goroutines (GOMAXPROCS=threads+1), like the
// library's server rows: a goroutine blocked in a page fault keeps its P, and with every P held
// so, the peer's handler goroutine would only run when the runtime's monitor steps in.
func runPeerChild(child, args string, threads int, timeout time.Duration) (int64, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("userfaultfd-go child: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	procs := max(runtime.GOMAXPROCS(0), threads+1)
	cmd.Env = append(os.Environ(), childEnv+"="+child, childArgsEnv+"="+args, fmt.Sprintf("GOMAXPROCS=%d", procs))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if ctx.Err() != nil {
		return 0, fmt.Errorf("userfaultfd-go: no result within %v, child killed (its handler stops at the first error and never returns)", timeout)
	}
	var res peerResult
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		return 0, fmt.Errorf("userfaultfd-go child: %v; %s", err, strings.TrimSpace(stderr.String()))
	}
	if res.Errors != "" {
		return 0, errors.New("userfaultfd-go: " + res.Errors)
	}
	return res.NS, nil
}

func peerChild(arg string) int {
	var a peerArgs
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		out.Encode(peerResult{Errors: err.Error()})
		return 1
	}
	if err := json.Unmarshal([]byte(arg), &a); err != nil || a.Size <= 0 || a.Threads <= 0 {
		return fail(fmt.Errorf("bad child arguments %q", arg))
	}
	if p := runtime.GOMAXPROCS(0); p <= a.Threads {
		return fail(fmt.Errorf("child runs with GOMAXPROCS=%d and %d faulting goroutines: the handler would have no P of its own", p, a.Threads))
	}
	src, err := getFaultSource(a.Size)
	if err != nil {
		return fail(err)
	}
	b, u, start, err := mapper.Register(a.Size)
	if err != nil {
		return fail(fmt.Errorf("mapper.Register: %w", err))
	}
	handlerErr := make(chan error, 1)
	go func() { handlerErr <- mapper.Handle(u, start, bytes.NewReader(src[:a.Size])) }()
	orders := touchOrder(a.Size/pageSize, a.Threads, a.Random, a.Seed)
	done := make(chan time.Duration, 1)
	go func() { done <- touchPages(orders, b) }()
	select {
	case d := <-done:
		if err := checkServed(b, func(p int) byte { return src[p*pageSize+1] }); err != nil {
			return fail(err)
		}
		out.Encode(peerResult{NS: d.Nanoseconds()})
		return 0
	case err := <-handlerErr:
		// The faulting goroutines are stuck for good; report and let the exit end them.
		return fail(fmt.Errorf("mapper.Handle returned: %v", err))
	}
}
