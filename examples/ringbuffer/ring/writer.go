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
	n, err := r.write(p, w.every)
	r.exit(&r.prod)
	return n, err
}

// Flush publishes every byte written so far. Producer only.
func (w *Writer) Flush() error { return w.r.flush() }

// Buffered returns how many bytes were written and not yet published. Producer only.
func (w *Writer) Buffered() int { return int(w.r.used(w.r.prod.pos, w.r.prod.pub)) }
