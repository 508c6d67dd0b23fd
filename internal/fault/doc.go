// Package fault serves the userfaultfd faults of mirrored memory with handlers that the Go
// garbage collector never stops: a C thread (cgo builds) or a handler process (any build, the
// program re-executes itself). It is the engine behind mirror.ServeFaults; users import mirror.
//
// Why not a goroutine: a goroutine that faults inside runtime assembly (copy, clear,
// bytes.Equal) cannot be preempted, so the collector's stop-the-world waits for it forever
// while an in-process Go handler waits for the world to restart. A handler that is not a Go
// thread of this process keeps serving through any GC.
//
// Every handler resolves each fault once for the shared page (UFFDIO_COPY, UFFDIO_ZEROPAGE, or
// a pwrite through an unregistered memfd alias followed by UFFDIO_CONTINUE), and makes sure
// every thread blocked on that page, through any view, goes on: the resolving ioctl wakes its
// own view, and a thread blocked through another view has queued its own message, which is
// resolved in turn (EEXIST, then a wake of that view, or UFFDIO_CONTINUE on a minor fault);
// after an error, a poisoned page or a partial fill, every view is woken explicitly, since
// errors wake no one. It counts, logs and checks what it did in a block of memory that Go reads
// with atomic loads.
//
// The handler process is the program itself, re-executed from /proc/self/exe with an
// environment variable that this package's init function recognises: it serves and exits
// without returning to the program. Init functions of packages initialised before this one
// (packages it does not depend on, sorted before it) do run in the handler process too.
package fault
