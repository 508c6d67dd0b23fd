package ring_test

import (
	"encoding/binary"
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

// Records: the producer reserves each record in the ring, fills it in place and submits a
// batch; the consumer gets each record as one slice, in place, and releases it by asking for
// the next.
func ExampleRing_Reserve() {
	r, err := ring.New(os.Getpagesize())
	if err != nil {
		panic(err)
	}
	defer r.Close()
	for _, s := range []string{"alpha", "beta", "gamma"} {
		rec, err := r.Reserve(len(s))
		if err != nil {
			panic(err)
		}
		copy(rec, s)
	}
	r.Submit() // one store publishes the three records
	r.CloseWrite()
	for {
		rec, err := r.NextRecord()
		if err == io.EOF {
			break
		}
		fmt.Printf("%s ", rec)
	}
	fmt.Println()
	// Output: alpha beta gamma
}

// ReadRecords hands every available record to a function and releases them all at once.
func ExampleRing_ReadRecords() {
	r, err := ring.New(os.Getpagesize())
	if err != nil {
		panic(err)
	}
	defer r.Close()
	for i := range 5 {
		rec, _ := r.Reserve(8)
		binary.LittleEndian.PutUint64(rec, uint64(i*i))
	}
	r.Submit()
	var sum uint64
	n, _ := r.ReadRecords(func(rec []byte) bool {
		sum += binary.LittleEndian.Uint64(rec)
		return true
	})
	fmt.Println(n, "records, sum", sum)
	// Output: 5 records, sum 30
}

// A buffered Writer publishes small writes in batches; the consumer takes everything
// published in one ReadSlice.
func ExampleNewWriter() {
	r, err := ring.New(os.Getpagesize())
	if err != nil {
		panic(err)
	}
	defer r.Close()
	w := ring.NewWriter(r, 1024)
	for _, word := range []string{"many ", "small ", "writes"} {
		w.Write([]byte(word))
	}
	fmt.Println(r.Len(), "bytes readable before Flush")
	w.Flush()
	s, _ := r.ReadSlice()
	fmt.Printf("%q\n", s)
	r.Consume(len(s))
	// Output:
	// 0 bytes readable before Flush
	// "many small writes"
}
