package uffd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	helpers["serve-over-socket"] = helperServeOverSocket
}

// socketPair returns two connected Unix stream sockets as *net.UnixConn, closed at the end of the test.
func socketPair(t testing.TB) (a, b *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return unixConn(t, fds[0]), unixConn(t, fds[1])
}

func unixConn(t testing.TB, fd int) *net.UnixConn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socket")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

func TestSendReceiveFD(t *testing.T) {
	a, b := socketPair(t)
	u := newT(t, WithFeatures(FeatureThreadID|FeatureMissingShmem))
	if err := SendFD(a, u, 0x7f0000001000); err != nil {
		t.Fatal(err)
	}
	v, start, err := ReceiveFD(b)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if start != 0x7f0000001000 {
		t.Fatalf("start %#x", start)
	}
	if v.Features() != u.Features() {
		t.Fatalf("received features %v, sent %v", v.Features(), u.Features())
	}
	if v.Fd() == u.Fd() {
		t.Fatal("received the same descriptor number")
	}
	// Both descriptors name one userfaultfd: a range registered through one is known to the
	// other (registering it again through the other is no conflict, EBUSY would say so).
	mem := anonT(t, pg)
	if err := u.Register(addr(mem), pg, ModeMissing); err != nil {
		t.Fatal(err)
	}
	if err := v.Register(addr(mem), pg, ModeMissing); err != nil {
		t.Fatalf("same userfaultfd through the received fd: %v", err)
	}
	if err := v.Unregister(addr(mem), pg); err != nil {
		t.Fatal(err)
	}
}

// peerSend writes the frame exactly as userfaultfd-go v0.1.2's transfer.SendUFFD does: the
// start address with binary.Write, then syscall.Sendmsg with no data (Go adds one byte on a
// stream socket) carrying two descriptors, fd 0 first (its sender builds the list that way).
func peerSend(t testing.TB, conn *net.UnixConn, fd int, start uintptr) {
	t.Helper()
	if err := binary.Write(conn, binary.BigEndian, int64(start)); err != nil {
		t.Fatal(err)
	}
	f, err := conn.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Sendmsg(int(f.Fd()), nil, syscall.UnixRights(0, fd), nil, 0); err != nil {
		t.Fatal(err)
	}
}

// peerReceive reads the frame as userfaultfd-go v0.1.2's transfer.ReceiveUFFD does and returns
// its descriptors (it insists on exactly two and keeps the second).
func peerReceive(t testing.TB, conn *net.UnixConn) (start int64, fds []int) {
	t.Helper()
	if err := binary.Read(conn, binary.BigEndian, &start); err != nil {
		t.Fatal(err)
	}
	f, err := conn.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, syscall.CmsgSpace(4))
	if _, _, _, _, err := syscall.Recvmsg(int(f.Fd()), nil, buf, 0); err != nil {
		t.Fatal(err)
	}
	msgs, err := syscall.ParseSocketControlMessage(buf)
	if err != nil {
		t.Fatal(err)
	}
	for i := range msgs {
		more, err := syscall.ParseUnixRights(&msgs[i])
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, more...)
	}
	return start, fds
}

func TestReceiveFDFromPeerFrame(t *testing.T) {
	a, b := socketPair(t)
	u := newT(t)
	peerSend(t, a, u.Fd(), 0x1234000)
	v, start, err := ReceiveFD(b) // the duplicate of fd 0 that came first is closed
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if start != 0x1234000 {
		t.Fatalf("start %#x", start)
	}
	if err := checkIsUserfaultfd(v.Fd()); err != nil {
		t.Fatal(err)
	}
}

func TestSendFDToPeerFrame(t *testing.T) {
	a, b := socketPair(t)
	u := newT(t)
	if err := SendFD(a, u, 0xabc000); err != nil {
		t.Fatal(err)
	}
	start, fds := peerReceive(t, b)
	for _, fd := range fds {
		defer unix.Close(fd)
	}
	if start != 0xabc000 || len(fds) != 2 {
		t.Fatalf("peer got start %#x and %d descriptors, wants 2", start, len(fds))
	}
	if err := checkIsUserfaultfd(fds[1]); err != nil {
		t.Fatalf("the peer's receiver keeps the second descriptor: %v", err)
	}
	if err := checkIsUserfaultfd(fds[0]); err == nil {
		t.Fatal("the placeholder is a userfaultfd: a peer that leaks it would keep the userfaultfd alive")
	}
}

// TestReceiveFDRefusesOther sends a pipe instead of a userfaultfd: ReceiveFD must refuse it and
// leave no descriptor behind (TestMain checks the whole run for leaks).
func TestReceiveFDRefusesOther(t *testing.T) {
	a, b := socketPair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	before := countFDs(t)
	peerSend(t, a, int(r.Fd()), 0)
	if _, _, err := ReceiveFD(b); err == nil || !strings.Contains(err.Error(), "not a userfaultfd") {
		t.Fatalf("ReceiveFD of a pipe: %v", err)
	}
	if after := countFDs(t); after != before {
		t.Fatalf("descriptors: %d before, %d after a refused ReceiveFD", before, after)
	}
	a.Close()
	if _, _, err := ReceiveFD(b); err == nil {
		t.Fatal("ReceiveFD on a closed connection succeeded")
	}
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestHandOffToProcess hands a userfaultfd to a second process, which serves the faults this
// process raises from a plain Go loop: the server needs the userfaultfd only, not the memory.
func TestHandOffToProcess(t *testing.T) {
	t.Parallel()
	const pages = 32
	u := newT(t, WithFeatures(FeatureMissingShmem))
	anon := anonT(t, pages*pg)
	shm := shmemT(t, pages*pg)
	for _, m := range [][]byte{anon, shm} {
		if err := u.Register(addr(m), len(m), ModeMissing); err != nil {
			t.Fatal(err)
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := unixConn(t, fds[0])
	childEnd := os.NewFile(uintptr(fds[1]), "socket")
	cmd := helperCmd(t, "serve-over-socket", "PAGES="+strconv.Itoa(2*pages), fmt.Sprintf("SHMEM_START=%d", addr(shm)))
	cmd.ExtraFiles = []*os.File{childEnd}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		childEnd.Close()
		t.Fatal(err)
	}
	childEnd.Close()
	if err := SendFD(conn, u, addr(anon)); err != nil {
		t.Fatal(err)
	}
	sums := []<-chan int{sumPagesAsync(anon), sumPagesAsync(shm)}
	for i, ch := range sums {
		if got := waitT(t, ch, "touching pages served by another process"); got != patternSum(pages) {
			t.Errorf("view %d: pages hold %d, want %d\n%s", i, got, patternSum(pages), out.String())
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("server process: %v\n%s", err, out.String())
	}
}

// Page p of a range served by the helper holds byte p+1 at every offset.
func patternSum(pages int) int { return pages * (pages + 1) / 2 }

func sumPagesAsync(b []byte) <-chan int {
	ch := make(chan int, 1)
	go func() {
		s := 0
		for i := 0; i < len(b); i += pg {
			s += int(b[i+pg-1]) // the last byte: the whole page was copied
		}
		ch <- s
	}()
	return ch
}

// helperServeOverSocket receives a userfaultfd on fd 3 and serves PAGES faults (half of them in
// the shmem range at SHMEM_START), page p of the
// range it belongs to filled with byte p+1.
func helperServeOverSocket() int {
	f := os.NewFile(3, "socket")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer c.Close()
	u, anonStart, err := ReceiveFD(c.(*net.UnixConn))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer u.Close()
	want, _ := strconv.Atoi(os.Getenv("PAGES"))
	shmStart, _ := strconv.ParseUint(os.Getenv("SHMEM_START"), 10, 64)
	buf := make([]byte, pg)
	var msgs [16]Msg
	served := map[uintptr]bool{}
	for len(served) < want {
		n, err := u.ReadMessages(msgs[:])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			if m.Event() != EventPagefault {
				fmt.Println("unexpected", m)
				return 1
			}
			a := m.Address() &^ uintptr(pg-1)
			start := anonStart
			if a >= uintptr(shmStart) && a < uintptr(shmStart)+uintptr(want/2*pg) {
				start = uintptr(shmStart)
			}
			p := byte((a-start)/uintptr(pg)) + 1
			for j := range buf {
				buf[j] = p
			}
			if _, err := u.CopyAll(a, buf, 0); err != nil {
				if !errors.Is(err, unix.EEXIST) {
					fmt.Println(err)
					return 1
				}
				u.Wake(a, pg) // a repeated message for a page already served
			}
			served[a] = true
		}
	}
	return 0
}
