package main

// Library rows of the double-mapped buffer suite: the examples' mirrored ring.

func libraryRingStreamRows(l *streamLoad) []row {
	return []row{{name: rowMirring, skip: func() string { return "examples/ringbuffer/ring is not built yet" }}}
}

func libraryRingWrapRows(w *wrapLoad) []row {
	return []row{{name: rowMirring, skip: func() string { return "examples/ringbuffer/ring is not built yet" }}}
}
