package uffd_test

import (
	"fmt"
	"log"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// Adopt a userfaultfd that other code opened (here with a bare userfaultfd(2), blocking and
// without its UFFDIO_API handshake, as a C library or another Go binding might leave it).
// FromFD finishes the handshake if needed, makes the descriptor non-blocking and close-on-exec,
// and owns it from then on.
func ExampleFromFD() {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC, 0, 0)
	if errno != 0 {
		log.Fatal(os.NewSyscallError("userfaultfd", errno))
	}
	u, err := uffd.FromFD(int(fd))
	if err != nil {
		unix.Close(int(fd)) // a refused descriptor stays the caller's
		log.Fatal(err)
	}
	defer u.Close()
	fmt.Println(u.Ioctls()&uffd.IoctlRegister != 0, u.Fd() == int(fd))
	// Output: true true
}

// Hand a userfaultfd to another process over a Unix socket, with the start address of the
// memory it serves. Here both ends are in one process; the receiver gets its own descriptor
// of the same userfaultfd, so a range registered through one is known to the other.
func ExampleSendFD() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		log.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			log.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	sender, receiver := conn(fds[0]), conn(fds[1])
	defer sender.Close()
	defer receiver.Close()

	u, err := uffd.New()
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	mem, err := unix.Mmap(-1, 0, unix.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := u.Register(uffd.AddrOf(mem), len(mem), uffd.ModeMissing); err != nil {
		log.Fatal(err)
	}
	if err := uffd.SendFD(sender, u, uffd.AddrOf(mem)); err != nil {
		log.Fatal(err)
	}

	v, start, err := uffd.ReceiveFD(receiver) // in the serving process
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()
	// The receiver resolves faults of the sender's memory: fill the page ahead of any touch.
	n, err := v.ZeroPage(start, len(mem), 0)
	fmt.Println(start == uffd.AddrOf(mem), n == len(mem), err)
	// Output: true true <nil>
}

// Read many fault messages per read(2) and serve them. The faults are raised inside
// madvise(MADV_POPULATE_READ), a system call: a goroutine faulting there holds no P and cannot
// deadlock the garbage collector against the server (see the package doc).
func ExampleUFFD_ReadMessages() {
	u, err := uffd.New()
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	const pages = 4
	pageSize := unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, pages*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := u.Register(uffd.AddrOf(mem), len(mem), uffd.ModeMissing); err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- unix.Madvise(mem, unix.MADV_POPULATE_READ) }()

	msgs := make([]uffd.Msg, 16) // reused: ReadMessages allocates nothing
	served := 0
	for served < pages {
		n, err := u.ReadMessages(msgs)
		if err != nil {
			log.Fatal(err)
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			if m.Event() != uffd.EventPagefault {
				continue
			}
			page := m.Address() &^ uintptr(pageSize-1)
			if _, err := u.ZeroPage(page, pageSize, 0); err != nil && !os.IsExist(err) {
				log.Fatal(err)
			}
			served++
		}
	}
	fmt.Println("served", served, "faults; populate:", <-done)
	// Output: served 4 faults; populate: <nil>
}
