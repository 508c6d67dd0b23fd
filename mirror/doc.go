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
// Mirrored memory served by userfaultfd has a further rule, set out in package uffd.
package mirror
