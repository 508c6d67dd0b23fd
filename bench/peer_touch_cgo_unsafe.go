//go:build cgo

package main

/*
#include <stdint.h>
#include <string.h>
#include <time.h>

// peer_touch loads the first 8 bytes of each page of order (page numbers) of base into first,
// in order, and returns the nanoseconds it took.
static int64_t peer_touch(const char *base, size_t page, const uint32_t *order, size_t n, uint64_t *first) {
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (size_t i = 0; i < n; i++) {
		uint64_t v;
		memcpy(&v, base + (size_t)order[i] * page, sizeof v);
		first[i] = v;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	return (int64_t)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
}
*/
import "C"

import (
	"time"
	"unsafe"
)

// cTouch loads the first 8 bytes of each page of view listed in order into first[i], in
// order, on this goroutine's thread inside a cgo call, and returns the time it took.
//
// Why C: a goroutine that waits in a page fault is, to the Go runtime, running; the runtime
// preempts a goroutine that runs for 10 ms with a signal (SIGURG), and the signal interrupts
// the fault: the thread handles it, runs the load again and faults again, so the handler reads
// a second message for a page it has just filled. userfaultfd-go's mapper.Handle then gets
// EEXIST from UFFDIO_COPY and returns, leaving the toucher stuck. A thread inside a cgo call
// is in a system call to the runtime, which neither preempts it nor stops it for the
// collector: its faults are delivered once. (Turning preemption off instead,
// GODEBUG=asyncpreemptoff=1, lets the collector wait for ever for the faulting goroutine.)
func cTouch(view []byte, order []uint32, first []uint64) time.Duration {
	if len(order) == 0 {
		return 0
	}
	ns := C.peer_touch((*C.char)(unsafe.Pointer(&view[0])), C.size_t(pageSize),
		(*C.uint32_t)(unsafe.Pointer(&order[0])), C.size_t(len(order)), (*C.uint64_t)(unsafe.Pointer(&first[0])))
	return time.Duration(ns)
}
