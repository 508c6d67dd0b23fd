package uffd

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestSmokeCopyShmem(t *testing.T) {
	needFreeP(t)
	u, err := New(WithFeatures(FeatureMissingShmem | FeatureThreadID))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	const n = 4 << 12
	mem, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	addr := uintptr(unsafe.Pointer(&mem[0]))
	ioctls, err := u.RegisterIoctls(addr, n, ModeMissing)
	if err != nil {
		t.Fatal(err)
	}
	if ioctls&IoctlMove != 0 || ioctls&IoctlCopy == 0 {
		t.Fatalf("ioctls %v", ioctls)
	}
	done := make(chan byte)
	go func() {
		var s byte
		for i := 0; i < n; i += 4096 {
			s += mem[i]
		}
		done <- s
	}()
	page := make([]byte, 4096)
	page[0] = 7
	var msgs [8]Msg
	for served := 0; served < 4; {
		k, err := u.ReadMessages(msgs[:])
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < k; i++ {
			if msgs[i].Event() != EventPagefault || msgs[i].ThreadID() == 0 {
				t.Fatalf("msg %v", &msgs[i])
			}
			if _, err := u.CopyAll(msgs[i].Address()&^4095, page, 0); err != nil {
				t.Fatal(err)
			}
			served++
		}
	}
	if s := <-done; s != 28 {
		t.Fatalf("sum %d", s)
	}
	info, ok := readFdinfo(u.Fd())
	if !ok || !info.apiDone || info.features&FeatureThreadID == 0 {
		t.Fatalf("fdinfo %+v %v", info, ok)
	}
}
