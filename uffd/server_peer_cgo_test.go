//go:build cgo

package uffd

import (
	"syscall"
	"testing"

	"github.com/loopholelabs/userfaultfd-go/pkg/mapper"
)

// A range registered by loopholelabs/userfaultfd-go (mapper.Register: its own userfaultfd, a
// private anonymous mapping registered MISSING) is served by this server through FromFD: Handle
// does not register again, so the peer's registration is kept as it is.
func TestServerAdoptsPeerRegistration(t *testing.T) {
	defer srvLeakCheck(t)()
	const pages = 64
	n := pages * srvPage
	b, fd, start, err := mapper.Register(n)
	if err != nil {
		t.Fatalf("mapper.Register: %v", err)
	}
	defer syscall.Munmap(b)
	u, err := FromFD(int(fd))
	if err != nil {
		syscall.Close(int(fd))
		t.Fatalf("FromFD on the peer's userfaultfd: %v", err)
	}
	defer u.Close()
	s := NewServer(u)
	srvHandle(t, s, start, n, pattern{seed: 21})
	stop, _ := srvStart(t, s)
	sum := 0
	for i := 0; i < n; i += srvPage { // a plain loop: this goroutine faults, the server resolves
		sum += int(b[i])
	}
	srvStopOK(t, stop)
	want := 0
	for p := 0; p < pages; p++ {
		want += int(patternByte(21, int64(p*srvPage)))
	}
	if sum != want {
		t.Errorf("sum %d, want %d", sum, want)
	}
	srvExpect(t, start, n, 21, 0)
	if st := s.Stats()[0]; st.Bytes != uint64(n) || st.Missing == 0 {
		t.Errorf("stats %+v, want %d bytes", st, n)
	}
}
