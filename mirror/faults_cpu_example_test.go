package mirror_test

import (
	"fmt"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// See what serving faults costs the pair's handler in CPU: while faults come close together
// it spins a few microseconds before it blocks; idle, it costs nothing.
func ExamplePair_FaultHandlerCPU() {
	const n = 256 * 4096
	r, err := alloc.Shared(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := mirror.Mirror(r, mirror.ServeFaults(nil), mirror.FaultAround(0), mirror.CloseRegion())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	v := p.Original()
	for off := 0; off < n; off += 4096 {
		v[off] = 1 // one zero-filled page per fault
	}
	busy, err := p.FaultHandlerCPU()
	if err != nil {
		fmt.Println(err)
		return
	}
	o, _ := p.FaultStats()
	perFault := busy / time.Duration(o.Missing) // a few microseconds
	fmt.Println(o.Missing, "faults served, handler CPU measured:", perFault > 0)
	// Output: 256 faults served, handler CPU measured: true
}
