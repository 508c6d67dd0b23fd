package ring

// Writer is the producer's buffered io.Writer: Write copies the bytes straight into the ring
// but publishes them to the consumer only every few bytes (the flush size), on Flush, or when
// the ring is full, so a stream of small writes pays for one publication, and at most one
// wake-up, per flush size instead of per write. It is what bufio.Writer is to an io.Writer,
// without bufio's extra buffer and copy: the ring's free space is the buffer.
//
// The consumer's counterpart needs no type: ReadSlice returns every readable byte in one slice
// and Consume releases any prefix of it.
type Writer struct {
	r     *Ring
	every uint64
}

// NewWriter returns a buffered writer on r that publishes every flushEvery bytes (at most the
// ring's capacity; 0 or less means a quarter of it). Only one goroutine may produce, through
// the Writer or the ring's own calls. Call Flush when the consumer must see what was written.
func NewWriter(r *Ring, flushEvery int) *Writer {
	if flushEvery <= 0 || uint64(flushEvery) > r.n {
		flushEvery = int(r.n / 4)
	}
	return &Writer{r: r, every: uint64(flushEvery)}
}

// Write copies p into the ring, waiting for room as needed (publishing what it holds before it
// waits). The bytes are published once the flush size has gathered, by Flush, or by
// CloseWrite. Producer only.
func (w *Writer) Write(p []byte) (int, error) {
	r := w.r
	if err := r.enter(&r.prod); err != nil {
		return 0, err
	}
	pr := &r.prod
	// The common case, a write that fits in the room this side already knows of, in one copy.
	if m := uint64(len(p)); m <= r.n-r.used(pr.pos, pr.peer) && m > 0 && r.h.state() == 0 {
		off := r.offset(pr.pos)
		copy(r.buf[off:off+m], p)
		pr.pos = r.advance(pr.pos, m)
		pr.lent = 0
		if r.used(pr.pos, pr.pub) >= w.every {
			r.publishHead()
		}
		r.exit(&r.prod)
		return len(p), nil
	}
	pr.peer = r.h.tail.Load() // the known room was too small: look at the consumer's tail
	done := 0
	var err error
	for done < len(p) {
		var s []byte
		if s, err = r.writeSlice(1); err != nil {
			break
		}
		k := copy(s, p[done:])
		pr.pos = r.advance(pr.pos, uint64(k))
		pr.lent = 0
		done += k
		if r.used(pr.pos, pr.pub) >= w.every {
			r.publishHead()
		}
	}
	r.exit(&r.prod)
	return done, err
}

// Flush publishes every byte written so far. Producer only.
func (w *Writer) Flush() error {
	r := w.r
	if err := r.enterLight(&r.prod); err != nil {
		return err
	}
	if r.prod.pos != r.prod.pub {
		r.publishHead()
	}
	r.exitLight(&r.prod)
	return nil
}

// Buffered returns how many bytes were written and not yet published. Producer only.
func (w *Writer) Buffered() int { return int(w.r.used(w.r.prod.pos, w.r.prod.pub)) }
