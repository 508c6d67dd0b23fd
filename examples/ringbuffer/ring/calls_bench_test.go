package ring

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/splitring"
)

// BenchmarkCallCost is one goroutine writing and reading back a 64-byte message: the cost of
// the calls themselves, without a second core, so that per-call bookkeeping shows.
func BenchmarkCallCost(b *testing.B) {
	msg, out := make([]byte, 64), make([]byte, 64)
	b.Run("ring-io", func(b *testing.B) {
		r := makeRing(b, "local", 1<<16)
		defer r.Close()
		for range b.N {
			r.Write(msg)
			io.ReadFull(r, out)
		}
	})
	b.Run("ring-zerocopy", func(b *testing.B) {
		r := makeRing(b, "local", 1<<16)
		defer r.Close()
		for range b.N {
			s, _ := r.WriteSlice(64)
			copy(s, msg)
			r.Commit(64)
			s, _ = r.ReadSliceAtLeast(64)
			copy(out, s[:64])
			r.Consume(64)
		}
	})
	b.Run("splitring-io", func(b *testing.B) {
		r := splitring.New(1 << 16)
		defer r.Close()
		for range b.N {
			r.Write(msg)
			io.ReadFull(r, out)
		}
	})
}

// BenchmarkRecordCallCost is one goroutine moving 64-byte records through the record API: a
// batch of records reserved, filled and submitted with one Submit, then read back with one
// ReadRecords (per record: the cost of Reserve and of the consumer's walk, no second core).
func BenchmarkRecordCallCost(b *testing.B) {
	msg := make([]byte, 64)
	const batch = 128
	r := makeRing(b, "local", 1<<16)
	defer r.Close()
	var sink byte
	b.ReportAllocs()
	for i := 0; i < b.N; i += batch {
		for range batch {
			rec, err := r.Reserve(len(msg))
			if err != nil {
				b.Fatal(err)
			}
			copy(rec, msg)
		}
		r.Submit()
		for got := 0; got < batch; {
			n, err := r.ReadRecords(func(rec []byte) bool { sink ^= rec[0] ^ rec[63]; return true })
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
	_ = sink
}

// BenchmarkWriterCallCost is one goroutine writing 64-byte messages through a Writer and
// taking them back with one ReadSlice per batch.
func BenchmarkWriterCallCost(b *testing.B) {
	msg := make([]byte, 64)
	const batch = 128
	r := makeRing(b, "local", 1<<16)
	defer r.Close()
	w := NewWriter(r, 0)
	var sink byte
	for i := 0; i < b.N; i += batch {
		for range batch {
			w.Write(msg)
		}
		w.Flush()
		s, err := r.ReadSliceAtLeast(batch * 64)
		if err != nil {
			b.Fatal(err)
		}
		for j := 0; j < batch*64; j += 64 {
			sink ^= s[j] ^ s[j+63]
		}
		r.Consume(batch * 64)
	}
	_ = sink
}

// BenchmarkRecordStream is records of 64 bytes and 4 KiB between two goroutines, as the
// bench's batched row sends them (Reserve and a copy per record, Submit per 16 KiB, ReadRecords,
// the consumer reading every byte), reporting the wake-ups sent per record. Run it with
// -cpu 1,2 to compare the two sides taking turns on one processor with the two sides on two;
// two wake-ups per lap of the ring (about 1/1850 per 64-byte record, 1/32 per 4 KiB one) mean
// that the sides took turns on whole laps by parking (see keepSpinning).
func BenchmarkRecordStream(b *testing.B) {
	for _, size := range []int{64, 4 << 10} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) { benchRecordStream(b, size) })
	}
}

func benchRecordStream(b *testing.B, size int) {
	msg := bytes.Repeat([]byte{1}, size)
	r := makeRing(b, "local", DefaultSize+4096)
	defer r.Close()
	b.SetBytes(int64(size))
	go func() {
		pending := 0
		for range b.N {
			rec, err := r.Reserve(len(msg))
			if err != nil {
				return
			}
			copy(rec, msg)
			if pending += len(msg) + recordHeader; pending >= 16<<10 {
				r.Submit()
				pending = 0
			}
		}
		r.CloseWrite()
	}()
	got, bad := 0, 0
	for {
		n, err := r.ReadRecords(func(rec []byte) bool {
			if bytes.IndexByte(rec, 0) >= 0 {
				bad++
			}
			return true
		})
		got += n
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if got != b.N || bad != 0 {
		b.Fatalf("got %d records (%d with a zero byte), want %d", got, bad, b.N)
	}
	b.ReportMetric(float64(r.wakeups.Load())/float64(b.N), "wakeups/op")
}
