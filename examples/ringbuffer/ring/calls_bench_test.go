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
		r, err := New(1 << 16)
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		for range b.N {
			r.Write(msg)
			io.ReadFull(r, out)
		}
	})
	b.Run("ring-zerocopy", func(b *testing.B) {
		r, err := New(1 << 16)
		if err != nil {
			b.Fatal(err)
		}
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
