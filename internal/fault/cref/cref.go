//go:build cgo

// Package cref is the C reference of the fault benchmarks: a plain C fault handler, written
// the way a C programmer would serve a mirrored mapping, and a C loop that touches pages. Only
// benchmarks and tests import it, so it is not part of the library's build.
package cref

/*
#include "ref.h"
*/
import "C"

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ServeTouch runs the C reference handler (a blocking read, UFFDIO_COPY from the source file —
// mapped read-only if mapSrc, as the native handler does, else read with pread —,
// UFFDIO_CONTINUE, UFFDIO_WAKE after an error, the same fault-around window) on two views
// registered on uffd, and times a C thread reading one byte of every page of view first
// (missing faults) and then of the other view (minor faults).
func ServeTouch(uffd int, v0, v1 uintptr, length, srcfd, maxAround, first int, mapSrc bool) (missing, minor time.Duration, err error) {
	var ns [2]C.uint64_t
	var m C.int
	if mapSrc {
		m = 1
	}
	e := C.mm_ref_serve_touch(C.int(uffd), C.uint64_t(v0), C.uint64_t(v1), C.uint64_t(length),
		C.uint64_t(os.Getpagesize()), C.int(srcfd), C.uint32_t(maxAround), C.int(first), m, &ns[0])
	if e != 0 {
		return 0, 0, unix.Errno(e)
	}
	return time.Duration(ns[0]), time.Duration(ns[1]), nil
}

// Touch reads one byte of every page of [addr, addr+length) from C and returns their sum.
func Touch(addr uintptr, length int) uint64 {
	return uint64(C.mm_touch(C.uint64_t(addr), C.uint64_t(length), C.uint64_t(os.Getpagesize())))
}
