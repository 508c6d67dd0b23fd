package main

import (
	"encoding/binary"
	"fmt"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
)

// Records: the same messages as the streams (streamLoad: the consumer checks the first and last
// byte and reads every byte in between), sent as records through the ring's record API, zero
// copy on both sides: the producer reserves each record in the ring and copies the message
// into it (its only copy), the consumer checks it where it lies.

const (
	rowRecBound = rowCrossCore
	// rowRecBatch: Reserve and copy per record, one Submit per 16 KiB; ReadRecords per batch.
	rowRecBatch = "mirrored ring records: Reserve + Submit per 16 KiB, ReadRecords (in place)"
	// rowRecOne: Reserve, copy and Submit per record; NextRecord per record.
	rowRecOne = "mirrored ring records: Reserve + Submit per record, NextRecord (in place)"
	// recSubmitEvery is how many reserved bytes the batching producer gathers per Submit.
	recSubmitEvery = 16 << 10
)

// recordsBound is the bound of a record stream: the laps hold the records as the ring lays
// them out (an 8-byte length in front of each), written and checked as the ring rows do. Two
// cores hand over the same work as the batched ring row, in the same steps: a lap is the
// records of one Submit (recSubmitEvery bytes, rounded up to whole records), so the bound pays
// as many hand-offs between the cores as that row, not fewer (laps of 64 KiB or of the whole
// ring, which the stream bound also tries, would hand over four to sixteen times less often).
// One core also runs laps of the whole ring, as for the streams.
func (l *streamLoad) recordsBound() (bytesPerSec, msgsPerSec float64, err error) {
	size := 8 + (l.m+7)&^7
	per := func(buf []byte) int { return len(buf) / size }
	batch := (recSubmitEvery + size - 1) / size * size
	return crossCoreBound([]int{batch}, streamRingCap, func(buf []byte, lap int) (int, int, error) {
		k := per(buf)
		for j := range k {
			rec := buf[j*size : j*size+8+l.m]
			binary.LittleEndian.PutUint64(rec, uint64(l.m))
			copy(rec[8:], l.src[(lap*k+j)%16])
		}
		return k * l.m, k, nil
	}, func(buf []byte, lap int) (int, int, error) {
		k := per(buf)
		for j := range k {
			rec := buf[j*size:]
			n := int(binary.LittleEndian.Uint64(rec))
			if n != l.m {
				return 0, 0, fmt.Errorf("record %d: length %d, want %d", lap*k+j, n, l.m)
			}
			if err := l.check(lap*k+j, rec[8:8+n]); err != nil {
				return 0, 0, err
			}
		}
		return 0, 0, nil
	})
}

// records sends the messages as records; batch selects the batched calls. Returns GB/s.
func (l *streamLoad) records(batch bool) (float64, error) {
	r, err := ring.New(streamRingCap)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	// The producer's loop is written out, as the bound's is: no call per record but the
	// ring's own.
	return l.runBoth(func() {
		pending := 0
		for i := range l.msgs {
			rec, err := r.Reserve(l.m)
			if err != nil {
				return // the consumer fails on the missing record
			}
			copy(rec, l.src[i%16])
			if pending += l.m + 8; !batch || pending >= recSubmitEvery {
				r.Submit()
				pending = 0
			}
		}
		r.Submit()
	}, func() error {
		i := 0
		if batch {
			var cerr error
			for i < l.msgs && cerr == nil {
				_, err := r.ReadRecords(func(rec []byte) bool {
					cerr = l.check(i, rec)
					i++
					return cerr == nil
				})
				if err != nil {
					return err
				}
			}
			return cerr
		}
		for ; i < l.msgs; i++ {
			rec, err := r.NextRecord()
			if err != nil {
				return err
			}
			if err := l.check(i, rec); err != nil {
				return err
			}
		}
		return nil
	})
}

// ringRecords measures the record API against the bound, in bytes/s (suite "records") and
// records/s (suite "records-msgs").
func ringRecords(b *bencher, sizes []int, bytesPerRun, maxMsgs, runs int) {
	for _, m := range sizes {
		l := newStreamLoad(m, min(maxMsgs, bytesPerRun/m))
		c := caseSpec{suite: "records", name: sizeName(m) + " records", unit: "GB/s", better: "higher", runs: runs,
			params: map[string]any{"record_bytes": m, "records": l.msgs, "ring_bytes": streamRingCap, "submit_every_bytes": recSubmitEvery}}
		tally := cpuTally{}
		ms := b.measure(c, tally.wrap([]row{
			{name: rowRecBound, run: func() (float64, error) {
				bps, _, err := l.recordsBound() // records/s is bytes/s over m: every record has m bytes
				return bps / 1e9, err
			}},
			{name: rowRecBatch, run: func() (float64, error) { return l.records(true) }},
			{name: rowRecOne, run: func() (float64, error) { return l.records(false) }},
		}, l.msgs, rowRecBound))
		b.rep.Measurements = append(b.rep.Measurements, tally.measurements("records-cpu", ms)...)
		for _, gb := range ms {
			mm := perMessage(gb, m)
			mm.Suite, mm.Name = "records-msgs", "records-msgs/"+gb.Case+"/"+gb.Row
			b.rep.Measurements = append(b.rep.Measurements, mm)
		}
	}
}
