package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/mirrormem/mirrormem/internal/mem"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// The frame SendFD writes and ReceiveFD reads is the one of loopholelabs/userfaultfd-go's
// transfer package (SendUFFD/ReceiveUFFD), so either end can be this package or that one:
//
//	8 bytes   the start address of the registered range, big-endian int64, written on its own
//	1 byte    (value 0) carrying SCM_RIGHTS with two descriptors: a placeholder, then the userfaultfd
//
// The placeholder exists because userfaultfd-go's sender puts one in front of the userfaultfd
// (and its receiver insists on exactly two). This package sends /dev/null there; it receives
// any number of descriptors, keeps the last and closes the others.

const maxRecvFDs = 8

// SendFD sends u's userfaultfd and the start address of the range it serves over a Unix socket
// (sendmsg(2) with SCM_RIGHTS), in the frame of userfaultfd-go's transfer.SendUFFD. The receiving
// process gets its own descriptor of the same userfaultfd; u stays open and usable here. The
// receiver can serve the faults of this process's registered memory: its address space need
// not contain that memory, since UFFDIO_COPY and friends act on the registering process.
func SendFD(conn *net.UnixConn, u *UFFD, start uintptr) error {
	if conn == nil || u == nil {
		return errors.New("uffd: SendFD needs a connection and a UFFD")
	}
	// Send a duplicate, made under a reference so that the number cannot be reused meanwhile:
	// the socket may block for as long as the peer does not read, and Close must not wait
	// for that.
	if !u.acquire() {
		return errClosed
	}
	dup, err := mem.DupCloexec(u.fd)
	u.release()
	if err != nil {
		return fmt.Errorf("uffd: SendFD: %w", err)
	}
	defer unix.Close(dup)
	placeholder, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("uffd: SendFD: %w", &os.PathError{Op: "open", Path: "/dev/null", Err: err})
	}
	defer unix.Close(placeholder)

	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(start))
	if _, err := conn.Write(hdr[:]); err != nil {
		return fmt.Errorf("uffd: SendFD: %w", err)
	}
	// The descriptors go with a byte of their own: a stream receiver that reads the header
	// with a plain read(2) would otherwise consume them with it and drop them.
	rights := unix.UnixRights(placeholder, dup)
	n, oobn, err := conn.WriteMsgUnix([]byte{0}, rights, nil)
	if err != nil {
		return fmt.Errorf("uffd: SendFD: %w", err)
	}
	if n != 1 || oobn != len(rights) {
		return fmt.Errorf("uffd: SendFD: short sendmsg (%d data bytes, %d control bytes)", n, oobn)
	}
	return nil
}

// ReceiveFD receives a userfaultfd sent by SendFD or by userfaultfd-go's transfer.SendUFFD
// (recvmsg(2) with SCM_RIGHTS) and adopts it as FromFD does. It returns the start address the
// sender gave. Any other descriptor in the message is closed; a descriptor that is not a
// userfaultfd is closed and refused.
func ReceiveFD(conn *net.UnixConn) (*UFFD, uintptr, error) {
	if conn == nil {
		return nil, 0, errors.New("uffd: ReceiveFD needs a connection")
	}
	// Both senders write exactly 9 bytes: the header, then one byte carrying the descriptors
	// (SendFD writes it; Go's syscall.Sendmsg adds it to the peer's empty message on a stream
	// socket). Read exactly those 9 bytes, never more, with room for descriptors on every
	// read, so that nothing of a following message is consumed and no descriptor is dropped
	// whichever bytes they ride with.
	var buf [9]byte
	oob := make([]byte, unix.CmsgSpace(maxRecvFDs*4))
	var fds []int
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	got := 0
	for got < len(buf) {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf[got:], oob)
		if oobn > 0 {
			more, perr := parseRights(oob[:oobn])
			fds = append(fds, more...)
			if perr != nil {
				closeAll()
				return nil, 0, fmt.Errorf("uffd: ReceiveFD: %w", perr)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			closeAll()
			return nil, 0, fmt.Errorf("uffd: ReceiveFD: more than %d descriptors in one message", maxRecvFDs)
		}
		if flags&unix.MSG_TRUNC != 0 {
			closeAll()
			return nil, 0, fmt.Errorf("uffd: ReceiveFD: a packet longer than the %d bytes left of the frame: the sender does not speak this frame (8-byte address, then one byte with the descriptors)", len(buf)-got)
		}
		if errors.Is(err, io.EOF) || (err == nil && n == 0 && oobn == 0) {
			closeAll()
			if got == 0 {
				return nil, 0, fmt.Errorf("uffd: ReceiveFD: %w", io.EOF)
			}
			return nil, 0, fmt.Errorf("uffd: ReceiveFD: connection closed after %d of the frame's %d bytes: %w", got, len(buf), io.ErrUnexpectedEOF)
		}
		if err != nil {
			closeAll()
			return nil, 0, fmt.Errorf("uffd: ReceiveFD: %w", err)
		}
		got += n
	}
	if len(fds) == 0 {
		return nil, 0, fmt.Errorf("uffd: ReceiveFD: the 9-byte frame carried no descriptor")
	}
	start := uintptr(binary.BigEndian.Uint64(buf[:8]))
	last := fds[len(fds)-1]
	fds = fds[:len(fds)-1]
	closeAll()
	u, err := FromFD(last)
	if err != nil {
		unix.Close(last)
		return nil, 0, fmt.Errorf("uffd: ReceiveFD: %w", err)
	}
	return u, start, nil
}

// parseRights returns every descriptor of the SCM_RIGHTS messages in oob, marking them
// close-on-exec (in case the runtime did not ask for MSG_CMSG_CLOEXEC).
func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		more, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, err
		}
		for _, fd := range more {
			unix.CloseOnExec(fd)
		}
		fds = append(fds, more...)
	}
	return fds, nil
}
