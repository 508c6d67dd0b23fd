package ring

import (
	"errors"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

// TestCloseWhileOtherSideWaits: every call that waits (the consumer's on an empty ring, the
// producer's on a full one) returns when the other side calls Close, or CloseWrite for the
// consumer, with the error that says so, and leaves no goroutine behind.
func TestCloseWhileOtherSideWaits(t *testing.T) {
	defer leakcheck.Check(t)()
	defer leakcheck.NoneLeft(t)()
	consumerCalls := map[string]func(r *Ring) error{
		"ReadSlice":  func(r *Ring) error { _, err := r.ReadSlice(); return err },
		"Read":       func(r *Ring) error { _, err := r.Read(make([]byte, 10)); return err },
		"NextRecord": func(r *Ring) error { _, err := r.NextRecord(); return err },
		"ReadRecords": func(r *Ring) error {
			_, err := r.ReadRecords(func([]byte) bool { return true })
			return err
		},
		"WriteTo": func(r *Ring) error {
			_, err := r.WriteTo(io.Discard)
			if err == nil {
				err = io.EOF // WriteTo ends without error at the end of the stream
			}
			return err
		},
	}
	producerCalls := map[string]func(r *Ring) error{
		"Write":        func(r *Ring) error { _, err := r.Write(make([]byte, 10)); return err },
		"WriteSlice":   func(r *Ring) error { _, err := r.WriteSlice(10); return err },
		"Reserve":      func(r *Ring) error { _, err := r.Reserve(10); return err },
		"Writer.Write": func(r *Ring) error { _, err := NewWriter(r, 0).Write(make([]byte, 10)); return err },
	}
	run := func(t *testing.T, kind string, call func(*Ring) error, setup func(*Ring), waiting func(*Ring) bool, closer func(*Ring) error, want error) {
		r := makeRing(t, kind, page)
		defer r.Close()
		setup(r)
		errc := make(chan error, 1)
		go func() { errc <- call(r) }()
		waitUntil(func() bool { return waiting(r) })
		if err := closer(r); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, want) {
			t.Errorf("waiting call returned %v, want %v", err, want)
		}
	}
	empty := func(*Ring) {}
	full := func(r *Ring) {
		if _, err := r.Write(make([]byte, r.Cap())); err != nil {
			t.Fatal(err)
		}
	}
	for _, kind := range []string{"local", "shared"} {
		for name, call := range consumerCalls {
			t.Run(kind+"/"+name+"/Close", func(t *testing.T) {
				run(t, kind, call, empty, (*Ring).readerWaiting, (*Ring).Close, ErrClosed)
			})
			t.Run(kind+"/"+name+"/CloseWrite", func(t *testing.T) {
				want := io.EOF
				run(t, kind, call, empty, (*Ring).readerWaiting, (*Ring).CloseWrite, want)
			})
		}
		for name, call := range producerCalls {
			t.Run(kind+"/"+name+"/Close", func(t *testing.T) {
				run(t, kind, call, full, (*Ring).writerWaiting, (*Ring).Close, ErrClosed)
			})
		}
	}
}

// TestCloseWhileRecordsStream closes the ring from a third goroutine while both sides run the
// record calls that touch the ring's memory (Reserve writes a length, ReadRecords reads them):
// both stop with ErrClosed and nothing faults on the unmapped memory.
func TestCloseWhileRecordsStream(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, kind := range []string{"local", "shared"} {
		for i := 0; i < 50; i++ {
			r := makeRing(t, kind, 3*page)
			closeWhileRunning(t, r, kind, true,
				// Only the call itself: the payload is not written, since a write into a
				// reserved record after Close is the caller's to avoid.
				func() error {
					_, err := r.Reserve(100)
					if err == nil {
						r.Submit()
					}
					return err
				},
				func() error { _, err := r.ReadRecords(func([]byte) bool { return true }); return err })
		}
	}
}

// TestCloseWhileWriterStreams is the same with the buffered Writer, whose Write copies into
// the ring's memory.
func TestCloseWhileWriterStreams(t *testing.T) {
	defer leakcheck.Check(t)()
	for i := 0; i < 50; i++ {
		r := makeRing(t, "local", 3*page)
		w, buf := NewWriter(r, 1000), make([]byte, 300)
		closeWhileRunning(t, r, "local", false,
			func() error { _, err := w.Write(buf); return err },
			func() error {
				s, err := r.ReadSlice()
				if err == nil {
					err = r.Consume(len(s))
				}
				return err
			})
	}
}

// closeWhileRunning runs each side in a goroutine of its own, calling it until it fails, closes
// r from this goroutine (once every side has started, if wait) and checks that every side
// stopped with ErrClosed.
func closeWhileRunning(t *testing.T, r *Ring, kind string, wait bool, sides ...func() error) {
	t.Helper()
	errs := make(chan error, len(sides))
	started := make(chan struct{}, len(sides))
	for _, side := range sides {
		go func() {
			started <- struct{}{}
			for {
				if err := side(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	if wait {
		for range sides {
			<-started
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for range sides {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: a side stopped with %v, want ErrClosed", kind, err)
		}
	}
}

// TestSpinForDoesNotSleep: a consumer with SpinFor keeps looking instead of going to sleep,
// so the message that ends its wait needs no wake-up; without SpinFor the same consumer goes
// to sleep (readerWaiting) within those yields, and the message costs one.
func TestSpinForDoesNotSleep(t *testing.T) {
	defer leakcheck.Check(t)()
	for _, spin := range []bool{true, false} {
		var opts []Option
		if spin {
			opts = append(opts, SpinFor(time.Minute))
		}
		r := makeRing(t, "local", page, opts...)
		defer r.Close() // also when a check below fails
		done := make(chan error)
		go func() {
			_, err := r.NextRecord()
			done <- err
		}()
		// The spinning consumer must stay awake for all these yields; the other must fall
		// asleep, which on a loaded machine (or under the race detector) may take longer
		// than any number of yields: it gets up to 10 seconds.
		slept := false
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; !slept && (i < 10000 || !spin && time.Now().Before(deadline)); i++ {
			slept = r.readerWaiting()
			runtime.Gosched()
		}
		if slept == spin {
			t.Fatalf("SpinFor %v: consumer asleep: %v", spin, slept)
		}
		if _, err := r.Reserve(1); err != nil {
			t.Fatal(err)
		}
		r.Submit()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if w := r.wakeups.Load(); (w == 0) != spin {
			t.Errorf("SpinFor %v: %d wake-ups", spin, w)
		}
		r.Close()
	}
}
