//go:build cgo

#ifndef MIRRORMEM_FAULT_CREF_H
#define MIRRORMEM_FAULT_CREF_H

#include <stdint.h>

// mm_touch: the faulting side of the C reference workload: reads one byte of every page of
// [addr, addr+len), returns a checksum.
uint64_t mm_touch(uint64_t addr, uint64_t len, uint64_t page);

// mm_ref_serve_touch: the C reference handler of the benchmarks (ref.c).
int mm_ref_serve_touch(int uffd, uint64_t v0, uint64_t v1, uint64_t len, uint64_t page, int srcfd,
		       uint32_t around, int first, int map, uint64_t ns[2]);

#endif
