//go:build cgo

// The native fault handler: a pthread that the Go garbage collector never stops, serving the
// faults of every view of one shared object from a source that needs no Go code.

#ifndef MIRRORMEM_FAULT_NATIVE_H
#define MIRRORMEM_FAULT_NATIVE_H

#include <stdint.h>

#include "block.h"

// Source kinds: must match the Go constants in config.go.
enum { MM_SRC_ZERO = 0, MM_SRC_FD = 1, MM_SRC_MEM = 2 };

struct mm_cfg {
	int uffd;          // the userfaultfd (shared with Go, not owned)
	int stopfd;        // eventfd: readable = stop (not owned)
	int src_kind;      // MM_SRC_*
	int src_fd;        // MM_SRC_FD: pread from here
	int alias_fd;      // >= 0: stage pages with pwrite into this memfd, then UFFDIO_CONTINUE
	int poison;        // UFFDIO_POISON usable: a page whose source fails raises SIGBUS
	uint64_t src_addr; // MM_SRC_MEM: source bytes in this process
	uint64_t map_addr; // MM_SRC_FD: a read-only mapping of the source from src_off on (0: none)
	uint64_t map_len;  // its length: COPY reads straight from it, saving pread's copy
	uint64_t src_off;  // source offset of the object's first byte
	uint64_t src_len;  // bytes the source has from src_off on; beyond: zeros
	uint64_t len;      // bytes per view
	uint64_t page;     // page size
	uint32_t max_around; // fault-around cap in pages (1 = off)
	uint32_t nviews;
	int no_spin;       // never spin before blocking
	uint64_t views[MM_MAX_VIEWS];
	void *shared;      // the counters/state/log block (layout in block.h)
};

struct mm_handler;

// mm_start starts the handler thread. On error returns NULL with *err = errno.
struct mm_handler *mm_start(const struct mm_cfg *cfg, int *err);
// mm_join joins the thread once the caller has written the stop eventfd, then frees h.
void mm_join(struct mm_handler *h);

// The watchdog of an in-process Go fault server (watchdog.c).
struct mm_watchdog;
// What the watchdog needs to map filled pages while Go code cannot run: the server's
// userfaultfd, the views and its block (none of it owned).
struct mm_rescue {
	int uffd;
	uint32_t nviews; // 0: no rescue
	uint64_t npages, page;
	uint64_t views[MM_MAX_VIEWS];
	uint64_t *hdr, *counters;
	uint8_t *state;
};
struct mm_watchdog *mm_watch_start(volatile uint64_t *heartbeat, uint64_t timeout_ms, uint64_t period_ms, int stopfd,
				   const char *msg, const struct mm_rescue *r, int *err);
void mm_watch_join(struct mm_watchdog *w);

#endif
