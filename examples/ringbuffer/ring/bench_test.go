package ring

import (
	"fmt"
	"io"
	"testing"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/splitring"
)

// benchCap is not a multiple of any record size below, so records keep crossing the end of
// the buffer at every offset.
const benchCap = 257 * 4096

var recordSizes = []int{64, 256, 1024, 4096, 16384, 65536}

// BenchmarkRing moves records of a given size from a producer goroutine to a consumer through
// the mirrored ring (zero-copy calls: one copy in, one copy out, never split) and through the
// split-copy ring (Write, io.ReadFull: the same two copies, split at the end of the buffer).
// "inplace" is a consumer that only looks at each record's first and last 8 bytes, as a
// parser of framed messages does: the mirrored ring lets it do so where the record lies, the
// split ring must copy the record out first.
func BenchmarkRing(b *testing.B) {
	for _, size := range recordSizes {
		for _, op := range []string{"copy", "inplace"} {
			b.Run(fmt.Sprintf("size=%d/op=%s/mirror", size, op), func(b *testing.B) { benchMirror(b, size, op == "inplace") })
			b.Run(fmt.Sprintf("size=%d/op=%s/split", size, op), func(b *testing.B) { benchSplit(b, size, op == "inplace") })
		}
	}
}

// streamBuffers returns the buffers a stream benchmark of size-byte messages writes from and
// reads into, and starts the clock counting size bytes per operation.
func streamBuffers(b *testing.B, size int) (src, dst []byte) {
	src, dst = make([]byte, size), make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	return src, dst
}

func benchMirror(b *testing.B, size int, inplace bool) {
	r := makeRing(b, "local", benchCap)
	defer r.Close()
	src, dst := streamBuffers(b, size)
	go func() {
		for i := 0; i < b.N; i++ {
			s, err := r.WriteSlice(size)
			if err != nil {
				panic(err)
			}
			copy(s, src)
			r.Commit(size)
		}
	}()
	var sink byte
	for i := 0; i < b.N; i++ {
		s, err := r.ReadSliceAtLeast(size)
		if err != nil {
			b.Fatal(err)
		}
		if inplace {
			sink ^= s[0] ^ s[7] ^ s[size-8] ^ s[size-1]
		} else {
			copy(dst, s[:size])
		}
		r.Consume(size)
	}
	_ = sink
}

func benchSplit(b *testing.B, size int, inplace bool) {
	r := splitring.New(benchCap)
	defer r.Close()
	src, dst := streamBuffers(b, size)
	go func() {
		for i := 0; i < b.N; i++ {
			if _, err := r.Write(src); err != nil {
				panic(err)
			}
		}
	}()
	var sink byte
	for i := 0; i < b.N; i++ {
		if _, err := io.ReadFull(r, dst); err != nil {
			b.Fatal(err)
		}
		if inplace {
			sink ^= dst[0] ^ dst[7] ^ dst[size-8] ^ dst[size-1]
		}
	}
	_ = sink
}

// BenchmarkWake measures a sleep and a wake-up per message: two goroutines (or, for futex,
// goroutines using the cross-process futex path) bounce one byte through two rings, so every
// Read finds its ring empty and sleeps. A round trip is two wake-ups. "gochan" is the same
// ping-pong over Go channels, the floor for goroutine wake-ups.
func BenchmarkWake(b *testing.B) {
	for _, kind := range []string{"chan", "futex"} {
		b.Run(kind, func(b *testing.B) {
			mk := func() *Ring {
				var r *Ring
				var err error
				if kind == "chan" {
					r, err = New(4096)
				} else {
					r, err = NewShared(4096)
				}
				if err != nil {
					b.Fatal(err)
				}
				return r
			}
			ping, pong := mk(), mk()
			defer ping.Close()
			defer pong.Close()
			b.ResetTimer()
			go func() {
				one := make([]byte, 1)
				for i := 0; i < b.N; i++ {
					ping.Read(one)
					pong.Write(one)
				}
			}()
			one := make([]byte, 1)
			for i := 0; i < b.N; i++ {
				ping.Write(one)
				pong.Read(one)
			}
		})
	}
	b.Run("gochan", func(b *testing.B) {
		ping, pong := make(chan byte), make(chan byte)
		go func() {
			for i := 0; i < b.N; i++ {
				pong <- <-ping
			}
		}()
		for i := 0; i < b.N; i++ {
			ping <- 1
			<-pong
		}
	})
}

// BenchmarkStream is bulk throughput: 4 KiB Writes drained with WriteTo, through rings of
// several sizes. The size that stays in each core's cache next to what the two sides copy
// from and to (DefaultSize) beats both smaller rings (the sides wait for each other more often)
// and larger ones (the stream no longer fits in cache).
func BenchmarkStream(b *testing.B) {
	for _, kind := range []string{"local", "shared"} {
		for _, size := range []int{64 << 10, DefaultSize, 1 << 20, 4 << 20} {
			b.Run(fmt.Sprintf("%s/size=%d", kind, size), func(b *testing.B) {
				r := makeRing(b, kind, size)
				defer r.Close()
				chunk := make([]byte, 4<<10)
				b.SetBytes(int64(len(chunk)))
				b.ResetTimer()
				go func() {
					for i := 0; i < b.N; i++ {
						r.Write(chunk)
					}
					r.CloseWrite()
				}()
				if _, err := r.WriteTo(io.Discard); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
