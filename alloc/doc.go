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
// Every Region has one owner and an idempotent Close. A cleanup attached with
// runtime.AddCleanup unmaps a Region that becomes unreachable, but it is only a safety net:
// the slice returned by Bytes does not keep the Region alive, so keep the Region reachable
// (and call Close) for as long as the memory is used.
//
// Errors wrap the errno of the failing system call with the call's name, so
// errors.Is(err, unix.ENOMEM) works, and the sentinel errors below say what kind of problem it
// was.
package alloc
