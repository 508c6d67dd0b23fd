// Package alloc allocates shared memory regions for mirroring: anonymous shared memory
// (MAP_SHARED|MAP_ANONYMOUS), memfd-backed memory, and memory mapped from a shared-memory file
// descriptor received from another process.
//
// It is for programs that map the same pages more than once (package mirror, ring buffers,
// double-mapped buffers) or share them with another process, and want the usual companions of
// such memory done right: pages pre-populated with MADV_POPULATE_WRITE, transparent huge pages
// where the administrator allows them for shmem, and address space reserved next to a region
// so that a view can later be placed right after it without racing other threads' mmap calls.
//
// Every Region has one owner and an idempotent Close: call it (defer r.Close()) when the
// memory is no longer used. The slice returned by Bytes does not keep the Region alive, so
// keep the Region reachable for as long as the memory is used. A Region that becomes
// unreachable without Close is never unmapped behind your back, since slices may still point
// to it: its cleanup only closes its file descriptor and prints a one-line warning that the
// mapping leaks because Close was not called. The same holds for a Lease and Release.
//
// Errors wrap the errno of the failing system call with the call's name, so
// errors.Is(err, unix.ENOMEM) works, and the sentinel errors below say what kind of problem it
// was.
package alloc
