package ring

import "sync/atomic"

// lineSize keeps the fields written by different sides on different cache lines. 128 rather
// than 64 because x86 prefetches cache lines in adjacent pairs.
const lineSize = 128

const (
	headerMagic   = 0x676e6972_6d6d6972 // "rimmring" little-endian
	headerVersion = 3
	headerSize    = 5 * lineSize
)

// header is the ring's shared state. For a ring shared between processes it lives at the start
// of the header memfd, so its layout is fixed: only fixed-size fields, no pointers.
type header struct {
	// Line 0: written once at creation, then read-mostly.
	magic     uint64
	capacity  uint64
	version   uint32
	stateBits atomic.Uint32 // stateClosed | stateWriteDone
	// The processes of a shared ring, so that a side waiting for the other can tell that the
	// other process died: the one that called NewShared, and the last one that called Attach.
	creatorPid  atomic.Int32
	attacherPid atomic.Int32
	_           [lineSize - 32]byte

	// Line 1: the producer's. head is the write position in [0, 2n).
	head atomic.Uint64
	_    [lineSize - 8]byte

	// Line 2: the consumer's. tail is the read position in [0, 2n).
	tail atomic.Uint64
	_    [lineSize - 8]byte

	// Line 3: the consumer's sleep. readerWaiting is set by a consumer about to sleep on an
	// empty ring; readerNeed is how many readable bytes it waits for (the producer wakes it only
	// once that many are there); readerSeq is the futex word the producer bumps to wake it.
	readerWaiting atomic.Uint32
	readerSeq     atomic.Uint32
	readerNeed    atomic.Uint64
	_             [lineSize - 16]byte

	// Line 4: the producer's sleep on a full ring; writerNeed is the free space it waits for.
	writerWaiting atomic.Uint32
	writerSeq     atomic.Uint32
	writerNeed    atomic.Uint64
	_             [lineSize - 16]byte
}
