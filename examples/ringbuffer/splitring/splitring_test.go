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

// TestPeek: frames of every size pass through a ring whose size divides none of them, so
// many straddle the end; each comes back whole through Peek, in place or reassembled.
func TestPeek(t *testing.T) {
	r := New(1000)
	const frames = 3000
	go func() {
		for i := range frames {
			f := make([]byte, 1+i%700)
			for j := range f {
				f[j] = byte(i + j)
			}
			r.Write(f)
		}
		r.CloseWrite()
	}()
	scratch := make([]byte, 700)
	inPlace := 0
	for i := range frames {
		n := 1 + i%700
		f, err := r.Peek(n, scratch)
		if err != nil {
			t.Fatal(err)
		}
		if &f[0] != &scratch[0] {
			inPlace++
		}
		for j := range f {
			if f[j] != byte(i+j) {
				t.Fatalf("frame %d byte %d: %d, want %d", i, j, f[j], byte(i+j))
			}
		}
		r.Discard(n)
	}
	if _, err := r.Peek(1, scratch); err != io.EOF {
		t.Fatalf("Peek at the end: %v, want io.EOF", err)
	}
	if inPlace == 0 || inPlace == frames {
		t.Fatalf("%d of %d frames in place: the test must see both cases", inPlace, frames)
	}
}
