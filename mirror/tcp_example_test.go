package mirror_test

import (
	"fmt"
	"net"
	"strings"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// Serve a pair from an image that another program serves with ServePages, fetched page by
// page over TCP as the pages are touched. The server must not be the program that touches
// the pages, whose goroutines may all be waiting in faults; this example's is, so it fills the
// pages with Populate, a system call, during which the calling goroutine holds no P and the
// server can answer.
func ExampleTCPSource() {
	// The serving side: any io.ReaderAt, here 100000 bytes of digits.
	image := strings.NewReader(strings.Repeat("0123456789", 10000))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	served := make(chan error, 1)
	go func() { served <- mirror.ServePages(l, image, image.Size()) }()
	defer func() {
		l.Close() // ServePages closes its connections and returns
		<-served
	}()

	// The reading side.
	r, err := alloc.Shared(32 * alloc.PageSize())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.ServeFaults(mirror.TCPSource(l.Addr().String(), mirror.TCPOptions{})))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	if err := p.Populate(0, len(p.Original())); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(p.Mirror()[99990:100000]), p.Original()[100000]) // the image's last bytes, then zeros
	// Output: 0123456789 0
}
