package fault

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// block is a mapped shared block (see layout.go). The memory is not Go heap: an anonymous
// mapping for the native handler, a shared memfd mapping for the handler process.
type block struct {
	mem []byte
	l   layout
}

func (b *block) word(off int) *uint64 { return (*uint64)(unsafe.Pointer(&b.mem[off])) }

func (b *block) hdr(i int) uint64       { return atomic.LoadUint64(b.word(i * 8)) }
func (b *block) setHdr(i int, v uint64) { atomic.StoreUint64(b.word(i*8), v) }
func (b *block) addHdr(i int, v uint64) { atomic.AddUint64(b.word(i*8), v) }
func (b *block) casHdr(i int, old, v uint64) bool {
	return atomic.CompareAndSwapUint64(b.word(i*8), old, v)
}

func (b *block) ctr(view, c int) uint64 {
	return atomic.LoadUint64(b.word(b.l.counters + (view*cWords+c)*8))
}
func (b *block) addCtr(view, c int, v uint64) {
	atomic.AddUint64(b.word(b.l.counters+(view*cWords+c)*8), v)
}

func (b *block) bytePtr(off int) *uint8 { return &b.mem[off] }

// Byte-sized atomics are not in sync/atomic: the state and dirty arrays are written by one
// writer at a time and read as whole bytes, which x86-64 and arm64 never tear.
func (b *block) state(p int) uint8       { return loadByte(b.bytePtr(b.l.state + p)) }
func (b *block) setState(p int, s uint8) { storeByte(b.bytePtr(b.l.state+p), s) }
func (b *block) dirty(v, p int) bool     { return loadByte(b.bytePtr(b.l.dirty+v*b.l.npages+p)) != 0 }
func (b *block) setDirty(v, p int, d bool) {
	var x uint8
	if d {
		x = 1
	}
	storeByte(b.bytePtr(b.l.dirty+v*b.l.npages+p), x)
}

func loadByte(p *uint8) uint8 {
	// An aligned 32-bit atomic load of the word holding the byte keeps the race detector and
	// the memory model happy.
	base, shift := wordOf(p)
	return uint8(atomic.LoadUint32(base) >> shift)
}

func wordOf(p *uint8) (*uint32, uint) {
	mis := int(uintptr(unsafe.Pointer(p)) & 3)
	return (*uint32)(unsafe.Add(unsafe.Pointer(p), -mis)), uint(mis) * 8
}

func storeByte(p *uint8, v uint8) {
	base, shift := wordOf(p)
	for {
		old := atomic.LoadUint32(base)
		nw := old&^(0xff<<shift) | uint32(v)<<shift
		if atomic.CompareAndSwapUint32(base, old, nw) {
			return
		}
	}
}

// errTextLen is the room for the text of the last source error (header words hErrText on).
const errTextLen = 8 * 8

// putErrText stores the text of the last source error, cut to errTextLen bytes (it is read
// together with hErrors, which the writer bumps after it).
func (b *block) putErrText(s string) {
	var buf [errTextLen]byte
	copy(buf[:], s)
	for i := 0; i < errTextLen/8; i++ {
		atomic.StoreUint64(b.word((hErrText+i)*8), binary.LittleEndian.Uint64(buf[i*8:]))
	}
}

// errText returns the text putErrText stored ("" if none).
func (b *block) errText() string {
	var buf [errTextLen]byte
	for i := 0; i < errTextLen/8; i++ {
		binary.LittleEndian.PutUint64(buf[i*8:], atomic.LoadUint64(b.word((hErrText+i)*8)))
	}
	if i := bytesIndexZero(buf[:]); i >= 0 {
		return string(buf[:i])
	}
	return string(buf[:])
}

func bytesIndexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// entry reads log entry i (the caller checked i < published count).
func (b *block) entry(i int) Entry {
	e := b.mem[b.l.log+i*logEntrySize:][:logEntrySize]
	return Entry{
		Time:   int64(binary.LittleEndian.Uint64(e[logTime:])),
		Offset: int64(binary.LittleEndian.Uint64(e[logOffset:])),
		Thread: binary.LittleEndian.Uint32(e[logThread:]),
		View:   int(e[logView]),
		Kind:   Kind(e[logKind]),
		Result: Result(e[logResult]),
		Pages:  int(binary.LittleEndian.Uint32(e[logPages:])),
	}
}

func (b *block) putEntry(i int, e Entry) {
	d := b.mem[b.l.log+i*logEntrySize:][:logEntrySize]
	binary.LittleEndian.PutUint64(d[logTime:], uint64(e.Time))
	binary.LittleEndian.PutUint64(d[logOffset:], uint64(e.Offset))
	binary.LittleEndian.PutUint32(d[logThread:], e.Thread)
	d[logView], d[logKind], d[logResult] = byte(e.View), byte(e.Kind), byte(e.Result)
	binary.LittleEndian.PutUint32(d[logPages:], uint32(e.Pages))
}

func (b *block) ptr() unsafe.Pointer { return unsafe.Pointer(&b.mem[0]) }

// newBlock maps a block: from fd (a memfd of the right size, shared) or anonymous if fd < 0.
func newBlock(fd, npages, logcap, pageSize int) (*block, error) {
	l := makeLayout(npages, logcap, pageSize)
	var mem []byte
	var err error
	if fd >= 0 {
		mem, err = unix.Mmap(fd, 0, l.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	} else {
		mem, err = unix.Mmap(-1, 0, l.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	}
	if err != nil {
		return nil, err
	}
	return &block{mem: mem, l: l}, nil
}

func (b *block) init(nviews, npages, logcap, pageSize int) {
	b.setHdr(hNViews, uint64(nviews))
	b.setHdr(hNPages, uint64(npages))
	b.setHdr(hPage, uint64(pageSize))
	b.setHdr(hLogCap, uint64(logcap))
	b.setHdr(hMagic, magic)
}

func (b *block) unmap() error {
	if b.mem == nil {
		return nil
	}
	err := unix.Munmap(b.mem)
	b.mem = nil
	return err
}
