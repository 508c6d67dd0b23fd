// Package mirror maps the same shared memory at two or more virtual addresses ("views"), with
// the mremap duplicate (mremap(addr, 0, n, MREMAP_MAYMOVE[|MREMAP_FIXED])) or, for memory that
// has a file descriptor, by mapping the memfd again.
//
// It is for ring buffers (with Adjacent, the mirror starts where the original ends, so a
// record that runs past the end of the buffer is one contiguous slice), for programs that fill
// memory through one view while others use another (post-copy migration, snapshot restore),
// and for benchmarks of double-mapped buffers.
//
//	r, _ := alloc.Shared(1<<20, alloc.WithRoom(1<<20))
//	p, _ := mirror.Mirror(r, mirror.Adjacent())
//	defer p.Close()        // the slices do not keep p alive: call Close when done
//	ring := p.Contiguous() // 2 MiB; ring[i] and ring[i+1<<20] are the same byte
//
// Only shared memory can be mirrored: private memory, the Go heap included, is refused with
// ErrNotShared before the kernel is asked (so it never logs its "attempted to duplicate a
// private mapping" warning); hugetlb, special and sealed mappings with ErrUnsupported; ranges
// that are empty, unaligned or span several mappings with ErrRange; unmapped memory with
// ErrNotMapped; views past the end of the backing object, which would raise SIGBUS, with
// ErrPastObject. A refused call leaves no mapping and no file descriptor behind.
//
// A child created with fork(2) shares every view with its parent (shared mappings are never
// copy-on-write). Another process can map the same memory from the memfd (alloc.FromFD).
//
// # Aliasing
//
// The views are the same bytes at different addresses, which neither the Go compiler nor any
// other assumes: it may keep a byte loaded through one address in a register across a store
// through the other, or drop a store it believes is overwritten. Within one function, do not
// write a byte through one view and then read (or write) the same byte through another view,
// expecting the second access to see the first, unless a synchronising operation lies between
// them: a sync/atomic operation, a channel operation, a mutex, a system call or a call the
// compiler cannot inline. These are always safe:
//
//   - writing a record through Contiguous (even across the end of the first view) and reading
//     it back, through either view, in another goroutine after a sync/atomic store of the
//     ring's head index and the matching load (the usual ring buffer protocol);
//   - copy() into one view and, later, copy() out of another (copy is a runtime call);
//   - any number of reads through several views with no write in between;
//   - reading and writing through one view only, in any pattern.
//
// # Serving faults
//
// With ServeFaults, every view is registered with one userfaultfd and each page is filled on
// first touch, through whichever view touches it, from a source: a file, another region, zeros,
// or any io.ReaderAt. A page is filled once; the other views map it through a minor fault;
// FaultStats counts both per view; VerifyFaults logs every fault, Verify checks the
// invariants and compares the filled pages with the source, VerifyHandler checks the invariants
// only (for memory that was written since). StageMinorFaults fills pages through the region's memfd and maps
// them with UFFDIO_CONTINUE (the QEMU/Firecracker pattern for shared guest memory), TrackWrites
// with TrackDirty and Dirty report the pages written through a view, Reset (MADV_REMOVE) and
// Discard (MADV_DONTNEED) undo fills in their two different ways.
//
//	f, _ := os.Open("snapshot.img")
//	p, _ := mirror.Mirror(r, mirror.ServeFaults(f)) // nothing is read yet
//	defer p.Close()
//	copy(buf, p.Mirror()[off:])                     // served on first touch
//	orig, mirr := p.FaultStats()
//
// A Go program must never hang on this memory. A goroutine that touches an unfilled page inside
// runtime assembly (copy, clear, bytes.Equal, append) cannot be stopped by the garbage
// collector; if the fault handler were a goroutine of the same process it would wait for the
// collector, and the collector for the goroutine, forever. So the faults of a file, a region
// or zeros are served by a C thread (cgo builds) or by a handler process (this program
// re-executed; CGO_ENABLED=0), which the collector never stops: touch those views any way you
// like. A source that is Go code (HTTPSource, or any constructor registered with
// RegisterSource and named with NamedSource) is built and served by a handler process, in
// every build: the same holds. A plain Go value is refused (ErrGoSource), unless you opt in
// with WithHandler(HandlerGo) to serve it with Go code in this process: then touch unfilled
// pages only after Populate, or with plain loops and system calls (never copy, clear, append,
// string(b), bytes.*, hash/*, fmt, strconv, nor a channel send of a value read from the view:
// they run runtime assembly); a watchdog thread aborts the process with a message naming this
// rule if it is broken. Pages already filled need no Go code: if the kernel unmaps one from a
// view (reclaim does, with no swap, and MADV_DONTNEED) and a goroutine then faults on it inside
// runtime assembly while Go code cannot run, the watchdog maps it again itself after at most a
// second (FaultStats.Rescued counts them). See ServeFaults.
package mirror
