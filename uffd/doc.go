// Package uffd is a userfaultfd binding in pure Go (no cgo), and a fault server.
//
// It is for Go programs that fill memory lazily, page by page, from somewhere else: post-copy
// live migration and snapshot restore (pages fetched from a file, a socket or a remote host on
// first touch), lazy loading of large images, and for programs that need to see which pages
// another part of the program touches or writes (write-protect tracking). Package mirror builds
// on it to serve the faults of memory mapped twice.
//
// The binding covers every UFFD_FEATURE_* and every UFFDIO_* ioctl up to Linux 6.18 on private
// anonymous, shmem and hugetlb memory. Hugetlb memory mapped with MAP_HUGETLB|MAP_NORESERVE
// registers and reports faults without a single huge page reserved, but resolving a fault
// needs a free page in the pool: with an empty pool UFFDIO_COPY fails (with EEXIST, although
// nothing is mapped) and the woken thread faults again, so reserve the pages (vm.nr_hugepages,
// or a mapping without MAP_NORESERVE) before serving hugetlb memory. Resolving is per huge page
// there, and hugetlb has no UFFDIO_ZEROPAGE.
//
// The parts:
//
//   - New opens a userfaultfd (userfaultfd(2), or /dev/userfaultfd), FromFD adopts one made
//     elsewhere, SendFD and ReceiveFD pass one to another process over a Unix socket (in the
//     frame of loopholelabs/userfaultfd-go's transfer package, so either end can be that one).
//   - Register, Unregister, and the resolving calls Copy, ZeroPage, Continue,
//     WriteProtectRange, Wake, Poison and Move, each wrapping one ioctl. Errors wrap the errno
//     with the ioctl's name (errors.Is(err, unix.EEXIST) works); EEXIST, EAGAIN, ENOENT and
//     ESRCH, the errors of the fault path, cost no allocation.
//   - ReadMessages reads many messages with one read(2), parked in the runtime poller, and Msg
//     decodes page faults and the fork, remap, remove and unmap events without allocating.
//   - Probe reports by name what the running kernel offers; asking New for a feature the kernel
//     lacks fails with an error matching ErrNotSupported that names the feature and the Linux
//     version that brought it.
//
// # Privileges
//
// Since Linux 5.11 (vm.unprivileged_userfaultfd = 0) a process without CAP_SYS_PTRACE only gets
// a userfaultfd that reports user-mode faults (UFFD_USER_MODE_ONLY). New falls back to that by
// itself; then a fault the kernel takes on the process's behalf, such as read(2) into registered
// memory, fails with EFAULT instead of being reported (IsUserModeOnly tells). KernelFaults
// refuses the fallback. /dev/userfaultfd (Linux 6.1+) is gated by its file permissions only.
// UFFD_FEATURE_EVENT_FORK always needs CAP_SYS_PTRACE.
//
// # The Go runtime
//
// A goroutine that faults on registered memory is stuck in the kernel while the Go scheduler
// believes it is running, which has two consequences for a server in the same process:
//
//   - A fault inside runtime assembly (copy, clear, bytes.Equal, ...) cannot be preempted, so a
//     garbage collection waits for it forever while the server goroutine that would resolve the
//     fault is stopped with every other goroutine: the process hangs.
//   - The faulting goroutine keeps its P. When every P is held that way (GOMAXPROCS = 1 and one
//     faulting goroutine, for instance) the server goroutine only runs once the scheduler
//     preempts a faulting one, and a preempted fault withdraws its unread message: the server
//     can starve. Serve refuses that case (GOMAXPROCS not above the goroutines declared
//     with WithFaultingGoroutines, default 1) with an error matching ErrStarved.
//
// So touch memory served in the same process only from plain Go loops, leaving a P free for the
// server, or inside system calls (MADV_POPULATE_READ/WRITE, read(2)), which hold no P and which
// the collector treats as stopped; or serve from another process (SendFD). Package mirror offers
// handlers that the collector never stops.
package uffd
