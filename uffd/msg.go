package uffd

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Event is the kind of a userfaultfd message (UFFD_EVENT_*).
type Event uint8

// The events.
const (
	EventPagefault Event = 0x12
	EventFork      Event = 0x13
	EventRemap     Event = 0x14
	EventRemove    Event = 0x15
	EventUnmap     Event = 0x16
)

// String names the event ("pagefault", "fork", "remap", "remove", "unmap").
func (e Event) String() string {
	switch e {
	case EventPagefault:
		return "pagefault"
	case EventFork:
		return "fork"
	case EventRemap:
		return "remap"
	case EventRemove:
		return "remove"
	case EventUnmap:
		return "unmap"
	}
	return fmt.Sprintf("event(%#x)", uint8(e))
}

// PagefaultFlags describe a page fault (UFFD_PAGEFAULT_FLAG_*).
type PagefaultFlags uint64

// The page fault flags.
const (
	FlagWrite PagefaultFlags = 1 << 0 // the access was a write
	FlagWP    PagefaultFlags = 1 << 1 // a write to a write-protected page
	FlagMinor PagefaultFlags = 1 << 2 // a minor fault: the page is in the page cache
)

// String names the flags, "write|wp|minor" style ("read" for none).
func (f PagefaultFlags) String() string {
	if f == 0 {
		return "read"
	}
	var parts []string
	for _, b := range []struct {
		f    PagefaultFlags
		name string
	}{{FlagWrite, "write"}, {FlagWP, "wp"}, {FlagMinor, "minor"}} {
		if f&b.f != 0 {
			parts = append(parts, b.name)
			f &^= b.f
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint64(f)))
	}
	return strings.Join(parts, "|")
}

// Msg is one struct uffd_msg as read from the userfaultfd, 32 bytes, decoded on demand so that
// reading costs nothing beyond the read(2). Which accessors mean something depends on Event:
// Flags, Address and ThreadID for EventPagefault; ForkFD for EventFork; Remap for EventRemap;
// Range for EventRemove and EventUnmap.
type Msg [sizeofMsg]byte

func (m *Msg) u64(off int) uint64 { return binary.LittleEndian.Uint64(m[off:]) }

// Event returns the message's kind.
func (m *Msg) Event() Event { return Event(m[0]) }

// Flags returns a page fault's flags.
func (m *Msg) Flags() PagefaultFlags { return PagefaultFlags(m.u64(8)) }

// Address returns a page fault's address: page aligned, unless the userfaultfd negotiated
// FeatureExactAddress.
func (m *Msg) Address() uintptr { return uintptr(m.u64(16)) }

// ThreadID returns the faulting thread's id (needs FeatureThreadID, else 0).
func (m *Msg) ThreadID() uint32 { return binary.LittleEndian.Uint32(m[24:]) }

// ForkFD returns the new userfaultfd of a fork event, which the read(2) that returned the message
// installed in this process's descriptor table: it serves the child's copy of the registered
// ranges. Adopt it with FromFD, or close it.
func (m *Msg) ForkFD() int { return int(binary.LittleEndian.Uint32(m[8:])) }

// Remap returns a remap event's old address, new address and length. Length 0 means the
// mapping was duplicated (mremap with old_size 0), not moved.
func (m *Msg) Remap() (from, to uintptr, length uint64) {
	return uintptr(m.u64(8)), uintptr(m.u64(16)), m.u64(24)
}

// Range returns the [start, end) of a remove or unmap event.
func (m *Msg) Range() (start, end uintptr) { return uintptr(m.u64(8)), uintptr(m.u64(16)) }

// String describes the message, for logs and tests.
func (m *Msg) String() string {
	switch m.Event() {
	case EventPagefault:
		return fmt.Sprintf("pagefault addr=%#x flags=%v tid=%d", m.Address(), m.Flags(), m.ThreadID())
	case EventFork:
		return fmt.Sprintf("fork ufd=%d", m.ForkFD())
	case EventRemap:
		f, t, l := m.Remap()
		return fmt.Sprintf("remap from=%#x to=%#x len=%d", f, t, l)
	case EventRemove, EventUnmap:
		s, e := m.Range()
		return fmt.Sprintf("%v [%#x, %#x)", m.Event(), s, e)
	}
	return m.Event().String()
}
