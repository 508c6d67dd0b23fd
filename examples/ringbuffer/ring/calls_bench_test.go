package ring

import (
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

// BenchmarkRecordStream is 64-byte records between two goroutines, as the bench's batched row
// sends them (Reserve per record, Submit per 16 KiB, ReadRecords), reporting the wake-ups
// sent per record.
func BenchmarkRecordStream(b *testing.B) {
	msg := make([]byte, 64)
	r := makeRing(b, "local", DefaultSize+4096)
	defer r.Close()
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
	var sink byte
	got := 0
	for {
		n, err := r.ReadRecords(func(rec []byte) bool { sink ^= rec[0] ^ rec[63]; return true })
		got += n
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if got != b.N {
		b.Fatalf("got %d records, want %d", got, b.N)
	}
	b.ReportMetric(float64(r.wakeups.Load())/float64(b.N), "wakeups/op")
	_ = sink
}
