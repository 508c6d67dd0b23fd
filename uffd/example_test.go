package uffd_test

import (
	"fmt"
	"log"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// Open a userfaultfd that reports faults on shmem with the faulting thread's id.
func ExampleNew() {
	u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem | uffd.FeatureThreadID))
	if err != nil {
		log.Fatal(err) // the error says what to change, e.g. a sysctl or the device's permissions
	}
	defer u.Close()
	fmt.Println(u.Features())
	// Output: MISSING_SHMEM|THREAD_ID
}

// Register shared memory for missing-page and minor faults; RegisterIoctls also lists the ioctls that
// resolve faults there.
func ExampleUFFD_Register() {
	u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem | uffd.FeatureMinorShmem))
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Munmap(mem)
	ioctls, err := u.RegisterIoctls(uffd.AddrOf(mem), len(mem), uffd.ModeMissing|uffd.ModeMinor)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ioctls & (uffd.IoctlCopy | uffd.IoctlContinue | uffd.IoctlMove))
	// Output: COPY|CONTINUE
}

// Serve a page fault (CopyAll is Copy for a byte slice): a goroutine touches registered memory,
// the fault arrives as a message, and UFFDIO_COPY fills the page and wakes the goroutine.
func ExampleUFFD_Copy() {
	u, err := uffd.New()
	if err != nil {
		log.Fatal(err)
	}
	defer u.Close()
	pageSize := unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := u.Register(uffd.AddrOf(mem), len(mem), uffd.ModeMissing); err != nil {
		log.Fatal(err)
	}

	sum := make(chan int)
	go func() {
		// The first access happens inside madvise(2): a goroutine blocked in a system call
		// leaves its P to the handler below, whatever GOMAXPROCS is (see the package doc).
		if err := unix.Madvise(mem, unix.MADV_POPULATE_READ); err != nil {
			log.Fatal(err)
		}
		s := 0
		for i := range mem {
			s += int(mem[i])
		}
		sum <- s
	}()

	var msgs [8]uffd.Msg
	n, err := u.ReadMessages(msgs[:])
	if err != nil {
		log.Fatal(err)
	}
	content := make([]byte, pageSize)
	for i := range content {
		content[i] = 1
	}
	for _, m := range msgs[:n] {
		if m.Event() != uffd.EventPagefault {
			continue
		}
		page := m.Address() &^ uintptr(pageSize-1)
		if _, err := u.CopyAll(page, content, 0); err != nil {
			log.Fatal(err) // EEXIST would mean another thread served it first: Wake instead
		}
	}
	fmt.Println(<-sum == pageSize)
	// Output: true
}

// Find out what the running kernel offers before relying on it.
func ExampleProbe() {
	r, err := uffd.Probe()
	if err != nil {
		log.Fatal(err)
	}
	if err := r.Require(uffd.FeatureMinorShmem); err != nil {
		fmt.Println(err) // e.g. "... does not offer UFFD_FEATURE_MINOR_SHMEM (Linux 5.14+)"
		return
	}
	fmt.Println("minor faults on shmem: yes")
	// Output: minor faults on shmem: yes
}
