package mirror_test

import (
	"bytes"
	"fmt"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// Serve the pages of both views lazily from a file: nothing is read until a page is touched,
// through either view, and each page is read once.
func ExampleServeFaults() {
	const n = 16 * 4096
	f, remove, err := snapshotFile(n) // an *os.File of n bytes: "snapshot" over and over
	if err != nil {
		fmt.Println(err)
		return
	}
	defer remove()

	r, err := alloc.Shared(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.ServeFaults(f), mirror.FaultAround(0))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()

	buf := make([]byte, 8)
	copy(buf, p.Mirror()[4096:])   // a missing fault through the mirror: the page is read from f
	copy(buf, p.Original()[4096:]) // the same page through the original: a minor fault
	orig, mirr := p.FaultStats()
	fmt.Println(string(buf))
	fmt.Printf("original: %d missing, %d minor; mirror: %d missing, %d minor\n", orig.Missing, orig.Minor, mirr.Missing, mirr.Minor)
	fmt.Println(p.Verify())
	// Output:
	// snapshot
	// original: 0 missing, 1 minor; mirror: 1 missing, 0 minor
	// <nil>
}

// A source that is Go code is served by Go code in this process, on explicit opt-in
// (WithHandler(HandlerGo)): Populate the range first, so
// that copy() and friends never fault on it.
func ExamplePair_Populate() {
	const n = 8 * 4096
	src := bytes.NewReader(bytes.Repeat([]byte{7}, n)) // Go code, no file descriptor
	r, err := alloc.Shared(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.ServeFaults(src), mirror.WithHandler(mirror.HandlerGo)) // the explicit opt-in
	if err != nil {
		fmt.Println(err) // builds without cgo refuse a Go source
		return
	}
	defer p.Close()
	if err := p.Populate(0, n); err != nil { // the faults happen inside a system call
		fmt.Println(err)
		return
	}
	fmt.Println(bytes.Count(p.Mirror(), []byte{7}) == n, p.FaultHandler())
}

// Dirty tracking per view: after TrackDirty(0), Dirty(0) lists the pages written through the
// original since then.
func ExamplePair_TrackDirty() {
	const n = 8 * 4096
	r, err := alloc.Shared(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	p, err := mirror.Mirror(r, mirror.ServeFaults(nil), mirror.TrackWrites())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	if err := p.TrackDirty(0); err != nil {
		fmt.Println(err)
		return
	}
	p.Original()[2*4096] = 1
	p.Original()[5*4096+100] = 1
	p.Mirror()[7*4096] = 1 // the mirror is not tracked
	dirty, _ := p.Dirty(0)
	fmt.Println(dirty)
	// Output: [8192 20480]
}
