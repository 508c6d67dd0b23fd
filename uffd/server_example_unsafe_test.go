package uffd_test

import (
	"bytes"
	"context"
	"fmt"
	"unsafe"

	"github.com/mirrormem/mirrormem/uffd"
	"golang.org/x/sys/unix"
)

// Serve a shared mapping lazily from a snapshot: each page is copied in on first touch.
func ExampleServer() {
	u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer u.Close()
	const size = 1 << 20
	snapshot := bytes.Repeat([]byte{1}, size) // any io.ReaderAt: a file, a socket reader
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer unix.Munmap(mem)
	start := uintptr(unsafe.Pointer(&mem[0]))
	if err := u.Register(start, size, uffd.ModeMissing); err != nil {
		fmt.Println(err)
		return
	}
	s := uffd.NewServer(u)
	if err := s.Handle(start, size, bytes.NewReader(snapshot)); err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()

	sum := 0
	for i := 0; i < size; i += 4096 { // a plain loop: never copy() from served memory
		sum += int(mem[i])
	}
	s.Close()
	st := s.Stats()[0]
	fmt.Println(<-done, sum, st.Bytes, st.Missing < 256)
	// Output: uffd: server closed 256 1048576 true
}

// Serve two views of one shared object: a page is filled once, whichever view touches it first.
func ExampleServer_HandleViews() {
	u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer u.Close()
	const size = 64 << 10
	a, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer unix.Munmap(a)
	addrA := uintptr(unsafe.Pointer(&a[0]))
	// The duplicate: mremap(a, 0, size, MREMAP_MAYMOVE).
	addrB, _, errno := unix.Syscall6(unix.SYS_MREMAP, addrA, 0, size, unix.MREMAP_MAYMOVE, 0, 0)
	if errno != 0 {
		fmt.Println(errno)
		return
	}
	defer unix.Syscall(unix.SYS_MUNMAP, addrB, size, 0)
	b := unsafe.Slice((*byte)(unsafe.Add(nil, addrB)), size)
	for _, v := range []uintptr{addrA, addrB} {
		// Add uffd.ModeMinor where the kernel has FeatureMinorShmem to see every touch.
		if err := u.Register(v, size, uffd.ModeMissing); err != nil {
			fmt.Println(err)
			return
		}
	}
	s := uffd.NewServer(u)
	if err := s.HandleViews(size, bytes.NewReader(bytes.Repeat([]byte{2}, size)), addrA, addrB); err != nil {
		fmt.Println(err)
		return
	}
	go s.Serve(context.Background())
	sum := 0
	for i := 0; i < size; i += 4096 {
		sum += int(b[i]) + int(a[i])
	}
	s.Close()
	st := s.Stats()
	fmt.Println(sum, st[0].Bytes+st[1].Bytes)
	// Output: 64 65536
}

// Prefetch pages ahead of the program while the server resolves its faults: the pages listed
// are filled in order, a few reads of the source at a time, and touching them then costs no
// fault at all.
func ExampleServer_Prefetch() {
	u, err := uffd.New(uffd.WithFeatures(uffd.FeatureMissingShmem))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer u.Close()
	const size = 1 << 20
	snapshot := bytes.Repeat([]byte{1}, size)
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer unix.Munmap(mem)
	start := uintptr(unsafe.Pointer(&mem[0]))
	if err := u.Register(start, size, uffd.ModeMissing); err != nil {
		fmt.Println(err)
		return
	}
	s := uffd.NewServer(u, uffd.WithPrefetch())
	if err := s.Handle(start, size, bytes.NewReader(snapshot)); err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()

	// The working set of a recorded run: the second half, then the first 64 KiB.
	ws := []uffd.PrefetchRange{{Off: size / 2, Len: size / 2}, {Off: 0, Len: 64 << 10}}
	st, err := s.Prefetch(context.Background(), start, ws, uffd.PrefetchOptions{InFlight: 4})
	fmt.Println(err, st.Filled)
	sum := 0
	for i := size / 2; i < size; i += 4096 { // a plain loop: never copy() from served memory
		sum += int(mem[i])
	}
	s.Close()
	fmt.Println(<-done, sum, s.Stats()[0].Missing)
	// Output:
	// <nil> 144
	// uffd: server closed 128 0
}
