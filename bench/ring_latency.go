package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
)

// One-way latency of 64-byte messages at low load: the producer sends one message, stamped
// with CLOCK_MONOTONIC (one clock for every process), then sleeps latencyGap, so the consumer
// is asleep when each message arrives and the figure includes waking it. The consumer takes
// the stamp off the clock as soon as it has the message. Reported: the median and the 99th
// percentile of every message of a run.

const (
	latencyGap       = 50 * time.Microsecond
	latencyMsg       = 64
	rowLatRing       = "mirrored ring (New): Reserve + Submit, NextRecord"
	rowLatChan       = "chan []byte"
	rowLatSock       = "Unix socket pair: write(2), read(2)"
	rowLatRingXproc  = "between processes: mirrored ring (NewShared): Reserve + Submit, NextRecord"
	rowLatSockXproc  = "between processes: Unix socket pair: write(2), read(2)"
	latencyCaseP50   = "64 B messages, one-way latency, median"
	latencyCaseP99   = "64 B messages, one-way latency, 99th percentile"
	latencyChildRing = "lat-ring"
	latencyChildSpin = "lat-ring-spin"
	// latencySpin is the SpinFor of the spinning ring rows: longer than the gap between
	// messages, so that the consumer never sleeps.
	latencySpin         = 200 * time.Microsecond
	rowLatRingSpin      = "mirrored ring (New, SpinFor 200 us): Reserve + Submit, NextRecord"
	rowLatRingSpinXproc = "between processes: mirrored ring (NewShared, SpinFor 200 us): Reserve + Submit, NextRecord"
	latencyChildSock    = "lat-sock"
)

func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// latencyStats returns the median and the 99th percentile of lat, in microseconds.
func latencyStats(lat []int64) (p50, p99 float64, err error) {
	if len(lat) == 0 {
		return 0, 0, errors.New("no message arrived")
	}
	slices.Sort(lat)
	return float64(lat[len(lat)/2]) / 1e3, float64(lat[len(lat)*99/100]) / 1e3, nil
}

// latencySend sends n stamped messages through send, latencyGap apart.
func latencySend(n int, send func(msg []byte) error) error {
	msg := make([]byte, latencyMsg)
	for i := range n {
		binary.LittleEndian.PutUint64(msg[8:], uint64(i))
		binary.LittleEndian.PutUint64(msg, uint64(monoNow()))
		if err := send(msg); err != nil {
			return err
		}
		time.Sleep(latencyGap) // pacing: the load generator's rate, not synchronisation
	}
	return nil
}

// latencyTake records the latency of message i and checks its sequence number.
func latencyTake(lat []int64, i int, msg []byte) ([]int64, error) {
	now := monoNow()
	if len(msg) != latencyMsg || binary.LittleEndian.Uint64(msg[8:]) != uint64(i) {
		return lat, fmt.Errorf("message %d arrived torn or out of order", i)
	}
	return append(lat, now-int64(binary.LittleEndian.Uint64(msg))), nil
}

// latencyRun runs send in this goroutine and recv in another and returns recv's latencies.
func latencyRun(n int, send func([]byte) error, closeSend func(), recv func(n int) ([]int64, error)) (p50, p99 float64, err error) {
	type res struct {
		lat []int64
		err error
	}
	done := make(chan res, 1)
	go func() {
		lat, err := recv(n)
		done <- res{lat, err}
	}()
	serr := latencySend(n, send)
	closeSend()
	r := <-done
	if err := errors.Join(serr, r.err); err != nil {
		return 0, 0, err
	}
	return latencyStats(r.lat)
}

func ringRecvLatency(r *ring.Ring, n int) ([]int64, error) {
	lat := make([]int64, 0, n)
	for i := range n {
		rec, err := r.NextRecord()
		if err != nil {
			return lat, err
		}
		if lat, err = latencyTake(lat, i, rec); err != nil {
			return lat, err
		}
	}
	return lat, nil
}

func ringSend(r *ring.Ring) func([]byte) error {
	return func(msg []byte) error {
		rec, err := r.Reserve(len(msg))
		if err != nil {
			return err
		}
		copy(rec, msg)
		return r.Submit()
	}
}

func sockRecvLatency(fd, n int) ([]int64, error) {
	lat := make([]int64, 0, n)
	buf := make([]byte, latencyMsg)
	for i := range n {
		if _, err := io.ReadFull(fdReader(fd), buf); err != nil {
			return lat, err
		}
		var err error
		if lat, err = latencyTake(lat, i, buf); err != nil {
			return lat, err
		}
	}
	return lat, nil
}

// fdReader reads a blocking file descriptor with read(2).
type fdReader int

func (r fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func latencyRingLocal(n int, opts ...ring.Option) (float64, float64, error) {
	r, err := ring.New(64<<10, opts...)
	if err != nil {
		return 0, 0, err
	}
	defer r.Close()
	return latencyRun(n, ringSend(r), func() { r.CloseWrite() }, func(n int) ([]int64, error) { return ringRecvLatency(r, n) })
}

func latencyChan(n int) (float64, float64, error) {
	ch := make(chan []byte, 64)
	pool := make([][]byte, 128) // at low load one message is in flight: 128 is plenty
	for i := range pool {
		pool[i] = make([]byte, latencyMsg)
	}
	k := 0
	return latencyRun(n, func(msg []byte) error {
		b := pool[k%len(pool)]
		k++
		copy(b, msg)
		ch <- b
		return nil
	}, func() { close(ch) }, func(n int) ([]int64, error) {
		lat := make([]int64, 0, n)
		for i := range n {
			b, ok := <-ch
			if !ok {
				return lat, io.ErrUnexpectedEOF
			}
			var err error
			if lat, err = latencyTake(lat, i, b); err != nil {
				return lat, err
			}
		}
		return lat, nil
	})
}

func latencySockLocal(n int) (float64, float64, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, os.NewSyscallError("socketpair", err)
	}
	defer unix.Close(fds[0])
	w := fdWriter(fds[1])
	return latencyRun(n, func(msg []byte) error { _, err := w.Write(msg); return err }, func() { unix.Close(fds[1]) },
		func(n int) ([]int64, error) { return sockRecvLatency(fds[0], n) })
}

// latencyXproc measures with the consumer in a child process.
func latencyXproc(n int, viaRing, spin bool) (float64, float64, error) {
	var files []*os.File
	var send func([]byte) error
	var closeSend func()
	mode := latencyChildSock
	if viaRing {
		r, fs, err := xprocRing(64 << 10)
		if err != nil {
			return 0, 0, err
		}
		defer r.Close()
		files, send, closeSend = fs, ringSend(r), func() { r.CloseWrite() }
		mode = latencyChildRing
		if spin {
			mode = latencyChildSpin
		}
	} else {
		cf, pf, err := xprocConn(false)
		if err != nil {
			return 0, 0, err
		}
		defer pf.Close()
		w := fdWriter(pf.Fd())
		files = []*os.File{cf}
		send = func(msg []byte) error { _, err := w.Write(msg); return err }
		closeSend = func() { pf.Close() }
	}
	res, _, err := runXprocChild(mode, strconv.Itoa(n), files, func() error {
		defer closeSend()
		return latencySend(n, send)
	})
	if err != nil {
		return 0, 0, err
	}
	var p50, p99 float64
	if _, err := fmt.Sscanf(res, "lat %g %g", &p50, &p99); err != nil {
		return 0, 0, fmt.Errorf("consumer process reported %q", res)
	}
	return p50, p99, nil
}

// latencyChild is the consumer process of the latency rows: "lat-ring n" or "lat-sock n".
func latencyChild(f []string) int {
	if len(f) != 2 {
		fmt.Fprintln(os.Stderr, "latency child: want mode and count, got", strings.Join(f, " "))
		return 2
	}
	n, _ := strconv.Atoi(f[1])
	var lat []int64
	var err error
	switch f[0] {
	case latencyChildRing, latencyChildSpin:
		var opts []ring.Option
		if f[0] == latencyChildSpin {
			opts = append(opts, ring.SpinFor(latencySpin))
		}
		var r *ring.Ring
		if r, err = ring.Attach(3, 4, opts...); err == nil {
			defer r.Close()
			fmt.Println("ready")
			lat, err = ringRecvLatency(r, n)
		}
	case latencyChildSock:
		fmt.Println("ready")
		lat, err = sockRecvLatency(3, n)
	default:
		err = fmt.Errorf("unknown mode %q", f[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "latency child:", err)
		return 1
	}
	p50, p99, err := latencyStats(lat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "latency child:", err)
		return 1
	}
	fmt.Printf("lat %g %g\n", p50, p99)
	return 0
}

// latencyRow is one contender of the latency cases: it returns the median and the 99th
// percentile of one run.
type latencyRow struct {
	name string
	run  func(n int) (p50, p99 float64, err error)
}

func latencyRows() []latencyRow {
	return []latencyRow{
		{rowLatRing, func(n int) (float64, float64, error) { return latencyRingLocal(n) }},
		{rowLatRingSpin, func(n int) (float64, float64, error) { return latencyRingLocal(n, ring.SpinFor(latencySpin)) }},
		{rowLatChan, latencyChan},
		{rowLatSock, latencySockLocal},
		{rowLatRingXproc, func(n int) (float64, float64, error) { return latencyXproc(n, true, false) }},
		{rowLatRingSpinXproc, func(n int) (float64, float64, error) { return latencyXproc(n, true, true) }},
		{rowLatSockXproc, func(n int) (float64, float64, error) { return latencyXproc(n, false, false) }},
	}
}

// ringLatency measures the latency cases. Each run of a row gives both figures, so the rows are
// run here (interleaved and rotated as bencher.measure does) and recorded as two cases.
func ringLatency(b *bencher, n, runs int) {
	rows := latencyRows()
	params := map[string]any{"message_bytes": latencyMsg, "messages": n, "gap_us": latencyGap.Microseconds()}
	mk := func(cas, row string) *Measurement {
		return &Measurement{Suite: "latency", Case: cas, Row: row, Name: "latency/" + cas + "/" + row, Params: params,
			Unit: "us", Better: "lower", Runs: []float64{}}
	}
	p50s, p99s := make([]*Measurement, len(rows)), make([]*Measurement, len(rows))
	for i, r := range rows {
		p50s[i], p99s[i] = mk(latencyCaseP50, r.name), mk(latencyCaseP99, r.name)
	}
	for k := range runs {
		fmt.Fprintf(b.cfg.log, "[%4.0fs] latency: 64 B messages run %d/%d\n", time.Since(b.start).Seconds(), k+1, runs)
		for j := range rows {
			i := (k + j) % len(rows)
			if p50s[i].NotMeasured != "" {
				continue
			}
			p50, p99, err := rows[i].run(n)
			if err != nil {
				p50s[i].NotMeasured, p99s[i].NotMeasured = err.Error(), err.Error()
				p50s[i].Runs, p99s[i].Runs = []float64{}, []float64{}
				continue
			}
			p50s[i].Runs = append(p50s[i].Runs, p50)
			p99s[i].Runs = append(p99s[i].Runs, p99)
		}
	}
	for _, m := range append(p50s, p99s...) {
		m.summarize()
		b.rep.Measurements = append(b.rep.Measurements, m)
	}
}
