package mirror_test

import (
	"fmt"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

func ExampleMirror() {
	r, err := alloc.Shared(4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	copy(p.Original(), "written through the original")
	fmt.Println(string(p.Mirror()[:28]), p.Backend())
	// Output: written through the original duplicate
}

func ExampleAdjacent() {
	const n = 1 << 16
	// Room for the mirror right after the region: the mirror is placed there race-free.
	r, err := alloc.Shared(n, alloc.WithRoom(n))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.Adjacent())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	ring := p.Contiguous()
	copy(ring[n-4:], "wrap-around") // crosses the end of the buffer: no special case
	fmt.Println(len(ring), string(r.Bytes()[n-4:]), string(r.Bytes()[:7]))
	// Output: 131072 wrap -around
}

func ExampleViews() {
	r, err := alloc.Memfd("three", 4096)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.Views(3), mirror.WithBackend(mirror.BackendMemfd))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	p.View(2)[0] = 'x'
	fmt.Println(p.NumViews(), string(p.View(0)[:1]), string(p.View(1)[:1]), p.Backend())
	// Output: 3 x x memfd
}

func ExampleOf() {
	r, err := alloc.Shared(3 * alloc.PageSize())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	ps := alloc.PageSize()
	r.Bytes()[ps] = 7
	// Mirror only the second page.
	p, err := mirror.Of(r.Bytes()[ps : 2*ps])
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	fmt.Println(p.Mirror()[0])

	_, err = mirror.Of(make([]byte, ps))
	fmt.Println(err != nil)
	// Output:
	// 7
	// true
}
