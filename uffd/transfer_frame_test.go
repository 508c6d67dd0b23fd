package uffd

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func header(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func packetPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return unixConn(t, fds[0]), unixConn(t, fds[1])
}

// TestSendFDBlockedDoesNotHoldClose: a SendFD blocked on a peer that does not read must not
// keep Close waiting, and must still deliver a working userfaultfd once the peer reads.
func TestSendFDBlockedDoesNotHoldClose(t *testing.T) {
	a, b := socketPair(t)
	// Fill a's send buffer (and b's receive buffer) so that SendFD's first write blocks.
	raw, err := a.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	filled := 0
	junk := make([]byte, 64<<10)
	raw.Write(func(fd uintptr) bool {
		for {
			n, err := unix.Write(int(fd), junk)
			if err != nil {
				return true // EAGAIN: full
			}
			filled += n
		}
	})
	u, err := New()
	if err != nil {
		t.Fatal(err)
	}
	before := countFDs(t)
	sent := make(chan error, 1)
	go func() { sent <- SendFD(a, u, 0x5000) }()
	// SendFD has its descriptors (the duplicate and the placeholder) open once it is past the
	// reference and about to block in the write.
	deadline := time.Now().Add(10 * time.Second)
	for countFDs(t) < before+2 {
		if time.Now().After(deadline) {
			t.Fatal("SendFD never opened its descriptors")
		}
		time.Sleep(time.Millisecond) // polling for a state, not waiting for one to happen
	}
	closed := make(chan error, 1)
	go func() { closed <- u.Close() }()
	if err := waitT(t, closed, "Close while SendFD blocks"); err != nil {
		t.Fatal(err)
	}
	// Drain the junk; then the frame arrives, with a userfaultfd that outlived u.
	drain := make([]byte, filled)
	if _, err := io.ReadFull(b, drain); err != nil {
		t.Fatal(err)
	}
	if err := waitT(t, sent, "SendFD after the peer read"); err != nil {
		t.Fatal(err)
	}
	v, start, err := ReceiveFD(b)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if start != 0x5000 {
		t.Fatalf("start %#x", start)
	}
	mem := anonT(t, pg)
	if err := v.Register(addr(mem), pg, ModeMissing); err != nil {
		t.Fatalf("the userfaultfd sent while u closed: %v", err)
	}
}

// TestReceiveFDFraming: ReceiveFD consumes exactly one frame whichever bytes the descriptors
// ride with, refuses truncated packets, and tells a connection closed mid-frame from one closed
// between frames.
func TestReceiveFDFraming(t *testing.T) {
	u := newT(t)
	t.Run("fds with the header, marker after", func(t *testing.T) {
		a, b := socketPair(t)
		if _, _, err := a.WriteMsgUnix(header(0x4000), unix.UnixRights(u.Fd()), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Write([]byte{0, 'x'}); err != nil { // marker, then the next message's byte
			t.Fatal(err)
		}
		v, start, err := ReceiveFD(b)
		if err != nil {
			t.Fatal(err)
		}
		v.Close()
		if start != 0x4000 {
			t.Fatalf("start %#x", start)
		}
		var next [1]byte
		if _, err := io.ReadFull(b, next[:]); err != nil || next[0] != 'x' {
			t.Fatalf("the byte after the frame: %q, %v (the marker was left in the stream)", next[0], err)
		}
	})
	t.Run("two frames back to back", func(t *testing.T) {
		a, b := socketPair(t)
		for _, s := range []uintptr{0x1000, 0x2000} {
			if err := SendFD(a, u, s); err != nil {
				t.Fatal(err)
			}
		}
		for _, want := range []uintptr{0x1000, 0x2000} {
			v, start, err := ReceiveFD(b)
			if err != nil {
				t.Fatal(err)
			}
			v.Close()
			if start != want {
				t.Fatalf("start %#x, want %#x", start, want)
			}
		}
	})
	t.Run("seqpacket longer than the frame", func(t *testing.T) {
		a, b := packetPair(t)
		before := countFDs(t)
		msg := append(header(0x5000), 1, 2, 3, 4, 5, 6, 7, 8)
		if _, _, err := a.WriteMsgUnix(msg, unix.UnixRights(u.Fd()), nil); err != nil {
			t.Fatal(err)
		}
		_, _, err := ReceiveFD(b)
		if err == nil || !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("ReceiveFD of a 16-byte packet: %v", err)
		}
		if after := countFDs(t); after != before {
			t.Fatalf("descriptors: %d before, %d after", before, after)
		}
	})
	t.Run("seqpacket frame", func(t *testing.T) {
		a, b := packetPair(t)
		if err := SendFD(a, u, 0x6000); err != nil {
			t.Fatal(err)
		}
		v, start, err := ReceiveFD(b)
		if err != nil {
			t.Fatal(err)
		}
		v.Close()
		if start != 0x6000 {
			t.Fatalf("start %#x", start)
		}
	})
	for _, c := range []struct {
		name string
		send []byte
		want error
	}{
		{"closed before the frame", nil, io.EOF},
		{"closed mid-header", []byte{1, 2, 3, 4}, io.ErrUnexpectedEOF},
		{"closed after the header", header(0x2000), io.ErrUnexpectedEOF},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := socketPair(t)
			if len(c.send) > 0 {
				if _, err := a.Write(c.send); err != nil {
					t.Fatal(err)
				}
			}
			a.CloseWrite()
			_, _, err := ReceiveFD(b)
			if !errors.Is(err, c.want) {
				t.Fatalf("ReceiveFD: %v, want %v", err, c.want)
			}
			if c.want == io.EOF && errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatal("clean end reported as unexpected")
			}
		})
	}
	t.Run("frame without descriptors", func(t *testing.T) {
		a, b := socketPair(t)
		if _, err := a.Write(append(header(0x3000), 0)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ReceiveFD(b); err == nil || !strings.Contains(err.Error(), "no descriptor") {
			t.Fatalf("ReceiveFD: %v", err)
		}
	})
}
