package ring

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"testing/iotest"

	"golang.org/x/sys/unix"
)

var page = unix.Getpagesize()

// stream is a deterministic byte sequence: byte i of the stream is a function of (seed, i), so
// a consumer can check every byte it receives, and where it is in the stream.
type stream struct {
	seed uint64
	off  uint64
}

func streamByte(seed, i uint64) byte {
	x := (i/8 + seed) * 0x9e3779b97f4a7c15
	x ^= x >> 29
	return byte(x >> (8 * (i % 8)))
}

func (s *stream) fill(b []byte) {
	for i := range b {
		b[i] = streamByte(s.seed, s.off+uint64(i))
	}
	s.off += uint64(len(b))
}

func (s *stream) check(b []byte) error {
	for i := range b {
		if want := streamByte(s.seed, s.off+uint64(i)); b[i] != want {
			return fmt.Errorf("stream byte %d: got %#x, want %#x", s.off+uint64(i), b[i], want)
		}
	}
	s.off += uint64(len(b))
	return nil
}

// makeRing makes a ring of one of the two kinds the tests run on.
func makeRing(t testing.TB, kind string, size int, opts ...Option) *Ring {
	t.Helper()
	var r *Ring
	var err error
	switch kind {
	case "local":
		r, err = New(size, opts...)
	case "shared":
		r, err = NewShared(size, opts...)
	}
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCapacityRoundedToPages(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, size := range []int{1, page - 1, page, page + 1, 3 * page, 5*page - 7} {
		r, err := New(size)
		if err != nil {
			t.Fatal(err)
		}
		want := (size + page - 1) / page * page
		if r.Cap() != want || r.Free() != want || r.Len() != 0 {
			t.Errorf("New(%d): Cap %d Free %d Len %d, want Cap=Free=%d Len=0", size, r.Cap(), r.Free(), r.Len(), want)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
}

func TestBadSizes(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, size := range []int{0, -1, math.MaxInt, math.MaxInt / 2} {
		if r, err := New(size); err == nil {
			r.Close()
			t.Errorf("New(%d) succeeded", size)
		}
		if r, err := NewShared(size); err == nil {
			r.Close()
			t.Errorf("NewShared(%d) succeeded", size)
		}
	}
	r := makeRing(t, "local", page)
	defer r.Close()
	if _, err := r.WriteSlice(page + 1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("WriteSlice(Cap+1): %v, want ErrTooLarge", err)
	}
	if _, err := r.ReadSliceAtLeast(page + 1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ReadSliceAtLeast(Cap+1): %v, want ErrTooLarge", err)
	}
	s, err := r.WriteSlice(10)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Commit(len(s) + 1); err == nil {
		t.Error("Commit beyond the lent slice succeeded")
	}
	if err := r.Consume(1); err == nil {
		t.Error("Consume with nothing lent succeeded")
	}
}

// TestWrapIsContiguous writes records that straddle the end of the buffer and checks that
// each comes back as one slice that runs past the first copy of the buffer.
func TestWrapIsContiguous(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		r := makeRing(t, kind, 3*page) // not a power of two
		const rec = 1000
		src := &stream{seed: 7}
		dst := &stream{seed: 7}
		straddled := 0
		for i := 0; i < 100; i++ {
			w, err := r.WriteSlice(rec)
			if err != nil {
				t.Fatal(err)
			}
			src.fill(w[:rec])
			if err := r.Commit(rec); err != nil {
				t.Fatal(err)
			}
			b, err := r.ReadSliceAtLeast(rec)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != rec {
				t.Fatalf("ReadSliceAtLeast: %d bytes, want %d", len(b), rec)
			}
			start := uintptr(unsafeAddr(b)) - uintptr(unsafeAddr(r.buf))
			if start+rec > uintptr(r.Cap()) {
				straddled++
			}
			if err := dst.check(b); err != nil {
				t.Fatal(err)
			}
			if err := r.Consume(rec); err != nil {
				t.Fatal(err)
			}
		}
		if straddled == 0 {
			t.Errorf("%s: no record crossed the end of the buffer; the test did not test the wrap", kind)
		}
		r.Close()
	}
}

// TestRandomized streams bytes between a producer and a consumer goroutine with random sizes
// and a random mix of every API, on rings whose capacity is not a power of two, starting at
// random positions (including just before the end of the index space), and checks every byte.
func TestRandomized(t *testing.T) {
	defer leakcheck.Check(t)()
	total := 4 << 20
	if testing.Short() {
		total = 1 << 20
	}
	for _, tc := range []struct {
		kind  string
		pages int
	}{{"local", 1}, {"local", 3}, {"shared", 5}, {"local", 7}} {
		t.Run(fmt.Sprintf("%s/pages=%d", tc.kind, tc.pages), func(t *testing.T) {
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 1))
			r := makeRing(t, tc.kind, tc.pages*page)
			defer r.Close()
			n := uint64(r.Cap())
			r.setPositions([]uint64{0, n - 1, n, 2*n - 1, rng.Uint64N(2 * n)}[rng.IntN(5)])
			prodSeed, consSeed := rng.Uint64(), rng.Uint64()
			var wg sync.WaitGroup
			var prodErr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				prodErr = produce(r, rand.New(rand.NewPCG(prodSeed, 2)), &stream{seed: seed}, total)
			}()
			got, err := consume(r, rand.New(rand.NewPCG(consSeed, 3)), &stream{seed: seed})
			wg.Wait()
			if prodErr != nil {
				t.Fatalf("producer: %v", prodErr)
			}
			if err != nil {
				t.Fatalf("consumer: %v", err)
			}
			if got != total {
				t.Fatalf("consumer got %d bytes, want %d", got, total)
			}
		})
	}
}

func randSize(rng *rand.Rand, n int) int {
	switch rng.IntN(4) {
	case 0:
		return 1 + rng.IntN(16)
	case 1:
		return 1 + rng.IntN(n)
	case 2:
		return n
	default:
		return 1 + rng.IntN(n/3+1)
	}
}

// A consumer waiting for k readable bytes and a producer waiting for m free bytes wait for each
// other forever when k+m > Cap+1 (see WriteSlice), so the zero-copy calls ask for at most half.
func produce(r *Ring, rng *rand.Rand, src *stream, total int) error {
	n := r.Cap()
	half := (n + 1) / 2
	buf := make([]byte, 2*n)
	for sent := 0; sent < total; {
		k := min(randSize(rng, half), total-sent)
		switch rng.IntN(3) {
		case 0: // zero-copy, committing in pieces
			s, err := r.WriteSlice(k)
			if err != nil {
				return err
			}
			if len(s) < k {
				return fmt.Errorf("WriteSlice(%d) returned %d bytes", k, len(s))
			}
			src.fill(s[:k])
			for done := 0; done < k; {
				c := 1 + rng.IntN(k-done)
				if err := r.Commit(c); err != nil {
					return err
				}
				done += c
			}
		case 1: // Write, possibly more than the ring holds
			k = min(1+rng.IntN(2*n), total-sent)
			src.fill(buf[:k])
			if m, err := r.Write(buf[:k]); err != nil || m != k {
				return fmt.Errorf("Write(%d) = %d, %v", k, m, err)
			}
		case 2: // ReadFrom a reader that returns short reads
			src.fill(buf[:k])
			m, err := r.ReadFrom(iotest.HalfReader(bytes.NewReader(buf[:k])))
			if err != nil || m != int64(k) {
				return fmt.Errorf("ReadFrom(%d) = %d, %v", k, m, err)
			}
		}
		sent += k
	}
	return r.CloseWrite()
}

func consume(r *Ring, rng *rand.Rand, dst *stream) (int, error) {
	n := r.Cap()
	half := (n + 1) / 2
	buf := make([]byte, 2*n)
	got := 0
	for {
		switch rng.IntN(4) {
		case 0:
			s, err := r.ReadSlice()
			if err == io.EOF {
				return got, nil
			}
			if err != nil {
				return got, err
			}
			k := 1 + rng.IntN(len(s))
			if err := dst.check(s[:k]); err != nil {
				return got, err
			}
			if err := r.Consume(k); err != nil {
				return got, err
			}
			got += k
		case 1:
			want := randSize(rng, half)
			s, err := r.ReadSliceAtLeast(want)
			if err == io.EOF {
				return got, nil
			}
			if err == io.ErrUnexpectedEOF { // fewer than want bytes remain: the other cases take them
				continue
			}
			if err != nil {
				return got, err
			}
			if len(s) < want {
				return got, fmt.Errorf("ReadSliceAtLeast(%d) returned %d bytes", want, len(s))
			}
			if err := dst.check(s[:want]); err != nil {
				return got, err
			}
			if err := r.Consume(want); err != nil {
				return got, err
			}
			got += want
		case 2:
			m, err := r.Read(buf[:randSize(rng, 2*n)])
			if err == io.EOF {
				return got, nil
			}
			if err != nil {
				return got, err
			}
			if err := dst.check(buf[:m]); err != nil {
				return got, err
			}
			got += m
		case 3: // WriteTo a writer that accepts a few chunks, then fails on purpose
			w := &checkWriter{dst: dst, left: 1 + rng.IntN(3)}
			m, err := r.WriteTo(w)
			got += int(m)
			if w.err != nil {
				return got, w.err
			}
			if err == nil {
				return got, nil // drained to EOF
			}
			if err != errEnough {
				return got, err
			}
		}
	}
}

var errEnough = errors.New("enough")

type checkWriter struct {
	dst  *stream
	left int
	err  error
}

func (w *checkWriter) Write(p []byte) (int, error) {
	if w.left == 0 {
		return 0, errEnough
	}
	w.left--
	if w.err = w.dst.check(p); w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// waitUntil spins (yielding the processor) until cond holds: it waits for a state the code under
// test publishes, not for time to pass.
func waitUntil(cond func() bool) {
	for !cond() {
		runtime.Gosched()
	}
}

func TestCloseWakesBlockedReader(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		r := makeRing(t, kind, page)
		errc := make(chan error)
		go func() {
			_, err := r.ReadSlice()
			errc <- err
		}()
		waitUntil(r.readerWaiting)
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Errorf("%s: blocked ReadSlice returned %v after Close, want ErrClosed", kind, err)
		}
		if _, err := r.Read(make([]byte, 1)); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: Read after Close: %v, want ErrClosed", kind, err)
		}
	}
}

func TestCloseWakesBlockedWriter(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		r := makeRing(t, kind, page)
		errc := make(chan error)
		go func() {
			_, err := r.Write(make([]byte, 3*page)) // more than fits: blocks
			errc <- err
		}()
		waitUntil(r.writerWaiting)
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Errorf("%s: blocked Write returned %v after Close, want ErrClosed", kind, err)
		}
		if _, err := r.WriteSlice(1); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: WriteSlice after Close: %v, want ErrClosed", kind, err)
		}
	}
}

// TestCloseWhileStreaming closes the ring from a third goroutine while both sides copy data
// through it: both stop with ErrClosed, Close waits for them, and nothing faults on the unmapped
// memory.
func TestCloseWhileStreaming(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		for i := 0; i < 20; i++ {
			r := makeRing(t, kind, 3*page)
			wbuf, rbuf := make([]byte, 5000), make([]byte, 7000)
			closeWhileRunning(t, r, kind, true,
				func() error { _, err := r.Write(wbuf); return err },
				func() error { _, err := r.Read(rbuf); return err })
		}
	}
}

func TestCloseWriteWakesReader(t *testing.T) {
	defer leakcheck.Check(t)()
	r := makeRing(t, "local", page)
	defer r.Close()
	errc := make(chan error)
	go func() {
		_, err := r.ReadSlice()
		errc <- err
	}()
	waitUntil(r.readerWaiting)
	if err := r.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != io.EOF {
		t.Errorf("blocked ReadSlice after CloseWrite: %v, want io.EOF", err)
	}
	if _, err := r.Write([]byte{1}); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after CloseWrite: %v, want ErrClosed", err)
	}
}

func TestNonBlocking(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		r := makeRing(t, kind, page, NonBlocking())
		if _, err := r.ReadSlice(); !errors.Is(err, ErrWouldBlock) {
			t.Errorf("%s: ReadSlice on empty ring: %v, want ErrWouldBlock", kind, err)
		}
		p := make([]byte, page+100)
		m, err := r.Write(p)
		if m != page || !errors.Is(err, ErrWouldBlock) {
			t.Errorf("%s: Write of %d into %d: %d, %v; want %d, ErrWouldBlock", kind, len(p), page, m, err, page)
		}
		if _, err := r.WriteSlice(1); !errors.Is(err, ErrWouldBlock) {
			t.Errorf("%s: WriteSlice on full ring: %v, want ErrWouldBlock", kind, err)
		}
		if m, err := r.Read(p); m != page || err != nil {
			t.Errorf("%s: Read: %d, %v; want %d, nil", kind, m, err, page)
		}
		r.Close()
	}
}

// TestIOInterfaces checks the ring through the standard library's own users of the interfaces.
func TestIOInterfaces(t *testing.T) {
	defer leakcheck.Check(t)()
	var (
		_ io.Writer     = (*Ring)(nil)
		_ io.Reader     = (*Ring)(nil)
		_ io.WriterTo   = (*Ring)(nil)
		_ io.ReaderFrom = (*Ring)(nil)
	)
	payload := make([]byte, 1<<20+123)
	(&stream{seed: 3}).fill(payload)

	// io.Copy into the ring takes ReadFrom, out of it WriteTo.
	r := makeRing(t, "local", 3*page)
	defer r.Close()
	go func() {
		io.Copy(r, onlyReader{bytes.NewReader(payload)})
		r.CloseWrite()
	}()
	var out bytes.Buffer
	if _, err := io.Copy(onlyWriter{&out}, r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), payload) {
		t.Fatal("io.Copy through the ring changed the bytes")
	}

	// The standard Reader conformance test, on a ring holding a whole small payload.
	r2 := makeRing(t, "local", page)
	defer r2.Close()
	small := payload[:page-1]
	if _, err := r2.Write(small); err != nil {
		t.Fatal(err)
	}
	r2.CloseWrite()
	if err := iotest.TestReader(onlyReader{r2}, small); err != nil {
		t.Error(err)
	}
}

type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

func TestCRC(t *testing.T) {
	// A guard on the stream generator the other tests trust: it must not be constant.
	a, b := make([]byte, 4096), make([]byte, 4096)
	(&stream{seed: 1}).fill(a)
	(&stream{seed: 2}).fill(b)
	if crc32.ChecksumIEEE(a) == crc32.ChecksumIEEE(b) || bytes.Count(a, a[:1]) == len(a) {
		t.Fatal("stream generator is degenerate")
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// TestWakeOnlyWhenSatisfied: a side asleep waiting for k bytes (readable or free) is woken once,
// by the Commit or Consume that makes k available, not by every Commit or Consume before it.
func TestWakeOnlyWhenSatisfied(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		r := makeRing(t, kind, page)
		type res struct {
			n   int
			err error
		}
		got := make(chan res, 1)
		go func() {
			s, err := r.ReadSliceAtLeast(100)
			got <- res{len(s), err}
		}()
		waitUntil(r.readerWaiting)
		publish := func(k int) {
			if _, err := r.WriteSlice(k); err != nil {
				t.Fatal(err)
			}
			if err := r.Commit(k); err != nil {
				t.Fatal(err)
			}
		}
		publish(10)
		publish(50)
		if w := r.wakeups.Load(); w != 0 {
			t.Errorf("%s: %d wake-ups for a reader waiting for 100 bytes with 60 there, want 0", kind, w)
		}
		publish(40)
		if res := <-got; res.err != nil || res.n < 100 {
			t.Errorf("%s: ReadSliceAtLeast(100) = %d bytes, %v", kind, res.n, res.err)
		}
		if w := r.wakeups.Load(); w != 1 {
			t.Errorf("%s: %d wake-ups for the reader, want 1", kind, w)
		}
		if err := r.Consume(100); err != nil {
			t.Fatal(err)
		}

		// The producer: the ring is full, it waits for 100 free bytes.
		publish(page)
		go func() {
			s, err := r.WriteSlice(100)
			got <- res{len(s), err}
		}()
		waitUntil(r.writerWaiting)
		release := func(k int) {
			if _, err := r.ReadSliceAtLeast(k); err != nil {
				t.Fatal(err)
			}
			if err := r.Consume(k); err != nil {
				t.Fatal(err)
			}
		}
		release(30)
		release(30)
		if w := r.wakeups.Load(); w != 1 {
			t.Errorf("%s: %d wake-ups after 60 of 100 bytes freed for the writer, want still 1", kind, w)
		}
		release(40)
		if res := <-got; res.err != nil || res.n < 100 {
			t.Errorf("%s: WriteSlice(100) = %d bytes, %v", kind, res.n, res.err)
		}
		if w := r.wakeups.Load(); w != 2 {
			t.Errorf("%s: %d wake-ups in all, want 2", kind, w)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReadRecordsCorrupt writes bytes that are not records (as a byte stream would) and checks
// that ReadRecords hands over the whole records before them, then reports ErrCorrupt instead of
// reading past the readable bytes: a header with its high half set, a length larger than the
// readable bytes, and fewer bytes left than a header.
func TestReadRecordsCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		tail []byte // written after one valid record of 3 bytes
	}{
		{"high bits", []byte{1, 0, 0, 0, 1, 0, 0, 0}},
		{"too long", []byte{64, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}},
		{"short header", []byte{1, 2, 3, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := makeRing(t, "local", 4096)
			defer r.Close()
			rec, err := r.Reserve(3)
			if err != nil {
				t.Fatal(err)
			}
			copy(rec, "abc")
			if err := r.Submit(); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Write(tc.tail); err != nil {
				t.Fatal(err)
			}
			var got []string
			n, err := r.ReadRecords(func(rec []byte) bool { got = append(got, string(rec)); return true })
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("ReadRecords: %v, want ErrCorrupt", err)
			}
			if n != 1 || len(got) != 1 || got[0] != "abc" {
				t.Fatalf("ReadRecords gave %d records %q before the corrupt bytes, want [\"abc\"]", n, got)
			}
			// The valid record was released, the corrupt bytes were not.
			if l := r.Len(); l != len(tc.tail) {
				t.Fatalf("Len after ReadRecords = %d, want the %d corrupt bytes", l, len(tc.tail))
			}
		})
	}
}

// TestMaxRecordFitsHeader: a record's length prefix holds 32 bits, so on a ring of more than
// 8 GiB, MaxRecord is not half the capacity, and Reserve refuses a record the consumer would
// read as corrupt (the ring here is a bare value: only the sizes are looked at).
func TestMaxRecordFitsHeader(t *testing.T) {
	r := &Ring{n: 1 << 34}
	if m := r.MaxRecord(); m != 1<<32-1 {
		t.Errorf("MaxRecord of a 16 GiB ring = %d, want %d", m, 1<<32-1)
	}
	if _, err := r.Reserve(1 << 32); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Reserve(4 GiB): %v, want ErrTooLarge", err)
	}
}
