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

	// Line 3: the consumer's sleep on an empty ring (see sleepLine).
	reader sleepLine
	// Line 4: the producer's sleep on a full ring.
	writer sleepLine
}

// sleepLine is one side's sleep, on its own cache line: waiting is set by a side about to
// sleep; need is what it waits for (readable bytes for the consumer, free space for the
// producer: the other side wakes it only once that much is there); seq is the futex word the
// other side bumps to wake it.
type sleepLine struct {
	waiting atomic.Uint32
	seq     atomic.Uint32
	need    atomic.Uint64
	_       [lineSize - 16]byte
}
