// Package fault serves the userfaultfd faults of mirrored memory with handlers that the Go
// garbage collector of the served program never stops: a C thread (cgo builds) or a handler
// process (any build: the program re-executes itself). It also runs the same engine in this
// process (StartGo) for the expert who asks for it. It is the machinery behind
// mirror.ServeFaults; users import mirror.
//
// Why not a goroutine: a goroutine that faults inside runtime assembly (copy, clear,
// bytes.Equal) cannot be preempted, so the collector's stop-the-world waits for it forever
// while an in-process Go handler waits for the world to restart. A handler that is not a Go
// thread of this process keeps serving through any GC.
//
// # One engine
//
// Every handler that is Go code is uffd.Server, with the shared block as its uffd.Tracker
// (engine.go): in the handler process for every source (a descriptor, zeros, or a Go source
// built by a registered constructor), and in this process under StartGo. The C thread
// (native.c) serves descriptors, memory and zeros in cgo builds.
//
// # The wake policy
//
// All handlers follow one policy. A fault is resolved once for the shared page (UFFDIO_COPY,
// UFFDIO_ZEROPAGE, UFFDIO_CONTINUE for a page in the page cache, or a pwrite through an
// unregistered memfd alias followed by UFFDIO_CONTINUE).
//
//   - Fast path (the C thread; the engine with one worker): the fill, the counters, the page
//     states and the log entry are recorded first, then the resolving ioctl runs without
//     DONTWAKE and wakes the faulting thread itself. When the faulting access returns, the
//     statistics include it. The other views are not woken: a thread blocked on the same page
//     through another view has queued a message of its own, which is handled in turn (COPY
//     answers EEXIST and that view is woken, or a minor fault is resolved by CONTINUE).
//   - Slow path (the ioctl did less than planned: EEXIST, an event pending, a short copy; and
//     the engine with several workers): what was recorded ahead is taken back, the ioctls run
//     with DONTWAKE, everything is recorded, then the faulting view and every other view are
//     woken over the pages filled.
//   - Errors wake no one by themselves: after a source error the page is poisoned in every
//     view (UFFDIO_POISON) and every view is woken; a thread then gets SIGBUS, never zeros.
//
// # The block
//
// Counters, page states, dirty bits and the verification log live in a block of memory that
// Go reads with atomic loads. Its layout is defined once for C in block.h; layout.go holds the
// Go constants, and cgo builds fail to compile if they differ (layout_cgo.go).
//
// # The handler process
//
// The handler process is the program itself, re-executed from /proc/self/exe with an
// environment variable that this package's init function recognises; its configuration comes
// through a memfd, not the environment. It serves and exits without returning to the program.
// Init functions of packages initialised before this one (packages it does not depend on,
// sorted before it) do run in the handler process too.
package fault
