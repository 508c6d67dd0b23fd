// Package uffd is a complete userfaultfd binding in pure Go, and a fault server.
//
// It is for programs that fill memory lazily (post-copy live migration, snapshot restore, lazy
// loading of large files) or that need to see which pages a program touches or writes: the
// binding covers every UFFD_FEATURE_* and UFFDIO_* up to Linux 6.18 on anonymous, shmem and
// hugetlb memory, without cgo.
//
// # The Go runtime
//
// A goroutine of the same process that faults on registered memory while inside runtime
// assembly (copy, clear, bytes.Equal) cannot be preempted, so a garbage collection waits for it
// forever while the in-process server that would resolve the fault is stopped with every other
// goroutine: the process hangs. Touch memory served by an in-process Server only from plain Go
// loops, from system calls (MADV_POPULATE_READ/WRITE) or from another process; package mirror
// offers handlers that the collector never stops.
package uffd
