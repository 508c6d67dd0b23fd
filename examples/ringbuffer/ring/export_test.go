package ring

// setPositions moves both indices of an empty, unused ring to pos (in [0, 2n)), so that tests
// can start a stream anywhere, including just before the end of the index space.
func (r *Ring) setPositions(pos uint64) {
	r.h.head.Store(pos)
	r.h.tail.Store(pos)
	r.prod.pos, r.prod.pub, r.prod.peer = pos, pos, pos
	r.cons.pos, r.cons.pub, r.cons.peer = pos, pos, pos
}

func (r *Ring) readerWaiting() bool { return r.h.reader.waiting.Load() != 0 }
func (r *Ring) writerWaiting() bool { return r.h.writer.waiting.Load() != 0 }
