package alloc_test

import (
	"fmt"

	"github.com/mirrormem/mirrormem/alloc"
)

func ExampleShared() {
	r, err := alloc.Shared(10000) // rounded up to whole pages
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	b := r.Bytes()
	b[0] = 1
	fmt.Println(r.Len()%alloc.PageSize() == 0, r.Len() >= 10000, b[0])
	// Output: true true 1
}

func ExampleMemfd() {
	r, err := alloc.Memfd("ring", 1<<20, alloc.WithRoom(1<<20))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	fmt.Println(r.Kind(), r.Fd() >= 0, r.Room())
	// Output: memfd/shmem true 1048576
}

func ExampleShared_badSize() {
	_, err := alloc.Shared(0)
	fmt.Println(err)
	// Output: alloc.Shared(0 bytes): invalid size: size 0 must be positive
}
