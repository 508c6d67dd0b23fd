package ring_test

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mirrormem/mirrormem/examples/ringbuffer/ring"
)

// A producer and a consumer goroutine; io.Copy uses the ring's ReadFrom and WriteTo, so the
// bytes are copied once into the ring and handed out of it in place.
func Example() {
	r, err := ring.New(3 * os.Getpagesize()) // not a power of two
	if err != nil {
		panic(err)
	}
	defer r.Close()
	go func() {
		io.Copy(r, strings.NewReader("hello, mirrored world\n"))
		r.CloseWrite()
	}()
	io.Copy(os.Stdout, r)
	// Output: hello, mirrored world
}

// Records are read in place even where they cross the end of the buffer.
func ExampleRing_ReadSliceAtLeast() {
	r, err := ring.New(os.Getpagesize())
	if err != nil {
		panic(err)
	}
	defer r.Close()
	rec := make([]byte, 1000)
	for i := 0; i < 10; i++ { // the 5th record runs past byte 4096
		w, _ := r.WriteSlice(len(rec))
		n := copy(w, fmt.Sprintf("record %d", i))
		clear(w[n:len(rec)])
		r.Commit(len(rec))
		b, _ := r.ReadSliceAtLeast(len(rec))
		if i == 4 {
			fmt.Printf("%s, %d contiguous bytes\n", strings.TrimRight(string(b[:len(rec)]), "\x00"), len(b))
		}
		r.Consume(len(rec))
	}
	// Output: record 4, 1000 contiguous bytes
}
