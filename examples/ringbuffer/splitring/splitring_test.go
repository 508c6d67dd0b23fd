package splitring

import (
	"bytes"
	"io"
	"testing"
)

func TestStreamAcrossTheEnd(t *testing.T) {
	r := New(1000) // records of 300 bytes cross the end of the buffer
	src := make([]byte, 1<<20)
	for i := range src {
		src[i] = byte(i * 7 / 3)
	}
	go func() {
		for off := 0; off < len(src); off += 300 {
			r.Write(src[off:min(off+300, len(src))])
		}
		r.CloseWrite()
	}()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src) {
		t.Fatal("bytes changed on the way through the ring")
	}
}

func TestCloseWakesReader(t *testing.T) {
	r := New(10)
	done := make(chan error)
	go func() {
		_, err := r.Read(make([]byte, 1))
		done <- err
	}()
	r.Close()
	if err := <-done; err != ErrClosed {
		t.Fatalf("Read after Close: %v, want ErrClosed", err)
	}
}
