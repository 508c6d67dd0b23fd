package mirror_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/mirror"
)

// Record the pages a run touches first, store the working set next to the snapshot, and on the
// next restore prefetch it, then push every other page until the image is resident.
func ExampleRestore() {
	const n = 64 * 4096
	f, remove, err := snapshotFile(n) // an *os.File of n bytes: "snapshot" over and over
	if err != nil {
		fmt.Println(err)
		return
	}
	defer remove()

	// The first run, served on demand, with the fault log on.
	r, err := alloc.Shared(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := mirror.Mirror(r, mirror.ServeFaults(f), mirror.FaultAround(0), mirror.VerifyFaults(1024), mirror.CloseRegion())
	if err != nil {
		fmt.Println(err)
		r.Close()
		return
	}
	buf := make([]byte, 8)
	for _, page := range []int{9, 3, 4, 40} {
		copy(buf, p.Original()[page*4096:])
	}
	ws, err := p.WorkingSet()
	p.Close()
	if err != nil {
		fmt.Println(err)
		return
	}
	stored, _ := ws.MarshalBinary() // kept next to the snapshot

	// The next restore: prefetch the working set, then push the rest.
	var loaded mirror.WorkingSet
	if err := loaded.UnmarshalBinary(stored); err != nil {
		fmt.Println(err)
		return
	}
	r, err = alloc.Shared(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err = mirror.Mirror(r, mirror.ServeFaults(f), mirror.CloseRegion(),
		mirror.Restore(mirror.RestoreOptions{WorkingSet: &loaded, Push: true, PushRate: 64 << 20}))
	if err != nil {
		fmt.Println(err)
		r.Close()
		return
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fmt.Println("working set:", loaded.Pages(0))
	fmt.Println("resident:", p.WaitResident(ctx))
	copy(buf, p.Mirror()[40*4096:])
	orig, mirr := p.FaultStats()
	fmt.Printf("%s; faults after the push: %d\n", buf, orig.Missing+orig.Minor+mirr.Missing+mirr.Minor)
	// Output:
	// working set: [9 3 4 40]
	// resident: <nil>
	// snapshot; faults after the push: 0
}

// A push held until the source is complete: the pair serves a store that a pre-copy is still
// filling, so the push starts only once the store holds the final bytes (a page the program
// faults on before that must come from elsewhere: the post-copy example's source does it).
func ExamplePair_StartPush() {
	const n = 64 * 4096
	store, err := os.CreateTemp("", "store")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.Remove(store.Name())
	defer store.Close()
	store.Truncate(n)

	r, err := alloc.Shared(n)
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := mirror.Mirror(r, mirror.ServeFaults(store), mirror.CloseRegion(),
		mirror.Restore(mirror.RestoreOptions{Push: true, HoldPush: true, PushRate: 64 << 20}))
	if err != nil {
		fmt.Println(err)
		r.Close()
		return
	}
	defer p.Close()

	store.WriteAt(bytes.Repeat([]byte("precopy!"), n/8), 0) // the pre-copy arrives
	if err := p.StartPush(); err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fmt.Println("resident:", p.WaitResident(ctx))
	pr, _ := p.RestoreProgress()
	fmt.Printf("%s; %d of %d pages pushed\n", p.Mirror()[n-8:], pr.Restored, pr.Pages)
	// Output:
	// resident: <nil>
	// precopy!; 64 of 64 pages pushed
}
