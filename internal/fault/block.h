//go:build cgo

// The block shared by a fault handler and Go: counters, page states, dirty bits and the
// verification log. This header is the layout's one definition for C; layout.go holds the
// same constants for Go, and layout_cgo.go makes every cgo build fail to compile if the two
// ever differ.

#ifndef MIRRORMEM_FAULT_BLOCK_H
#define MIRRORMEM_FAULT_BLOCK_H

#include <stdint.h>

#define MM_MAX_VIEWS 8

// Header words (uint64 each).
enum {
	H_MAGIC = 0, H_NVIEWS, H_NPAGES, H_PAGE, H_LOGCAP, H_LOGNEXT, H_VIOLATIONS, H_VIOL_CODE,
	H_VIOL_OFF, H_ERRORS, H_ERRNO, H_ERR_OFF, H_MSGS, H_REMOVES, H_CLOSING, H_HEARTBEAT,
	H_LOOPS, H_TAKEOVERS, H_TRACKED,
	H_INFLIGHT,       // handler process: first page of the fault being resolved, plus 1
	H_INFLIGHT_PAGES, // handler process: how many pages from H_INFLIGHT
	H_ERR_TEXT,       // 8 words: the last source error's text (sources that are Go code)
	H_TID = 29,       // the serving thread's id (native) or process id (handler process)
	H_SPIN_HITS = 30, // waits ended by a message found while spinning
	H_SPIN_MISSES = 31, // spins that ended without a message (the thread then blocked)
	H_WORDS = 32,
};
// Counter words per view (uint64 each).
enum {
	C_MISSING = 0, C_MINOR, C_WP, C_COPIED, C_ZEROED, C_CONTINUED, C_EEXIST, C_EAGAIN, C_WAKES,
	C_STAGED, C_BYTES, C_DIRTY, C_AROUND,
	C_RESCUED, // pages the in-process server's watchdog mapped while Go code could not run
	C_WORDS = 16,
};
// Page states (one byte per page).
enum { ST_EMPTY = 0, ST_FILLED = 1, ST_PRESENT = 2, ST_RESET = 3 };
// Log entry kinds and results.
enum { K_MISSING = 1, K_MINOR = 2, K_WP = 3, K_REMOVE = 4 };
enum {
	R_COPIED = 1, R_ZEROED = 2, R_STAGED = 3, R_CONTINUED = 4, R_EEXIST = 5, R_ERROR = 6,
	R_UNPROTECTED = 7, R_RESET = 8,
};
// Invariant violations.
enum { V_TWICE = 1, V_MINOR_UNFILLED = 2 };

// A log entry.
struct mm_log {
	uint64_t time_ns, off;
	uint32_t tid;
	uint8_t view, kind, result, pad;
	uint32_t pages, pad2;
};

// Offsets in the block: the header, then the counters, then the page states (rounded up to 64
// bytes), the dirty bits of every view (rounded up likewise), then the log.
#define MM_ROUND64(n) (((n) + 63) & ~(uint64_t)63)
#define MM_COUNTERS_OFF ((uint64_t)H_WORDS * 8)
#define MM_STATE_OFF (MM_COUNTERS_OFF + (uint64_t)MM_MAX_VIEWS * C_WORDS * 8)
#define MM_DIRTY_OFF(npages) (MM_STATE_OFF + MM_ROUND64(npages))
#define MM_LOG_OFF(npages) (MM_DIRTY_OFF(npages) + MM_ROUND64((uint64_t)MM_MAX_VIEWS * (npages)))

_Static_assert(sizeof(struct mm_log) == 32, "a log entry is 32 bytes");
_Static_assert(H_ERR_TEXT + 8 <= H_TID, "the error text ends before the thread id");
_Static_assert(H_SPIN_MISSES < H_WORDS, "the header holds every word");
_Static_assert(C_RESCUED < C_WORDS, "the counters fit");

// Byte offsets of the log entry's fields, for Go's checks.
enum {
	MM_LOG_OFF_TIME = __builtin_offsetof(struct mm_log, time_ns),
	MM_LOG_OFF_OFF = __builtin_offsetof(struct mm_log, off),
	MM_LOG_OFF_TID = __builtin_offsetof(struct mm_log, tid),
	MM_LOG_OFF_VIEW = __builtin_offsetof(struct mm_log, view),
	MM_LOG_OFF_KIND = __builtin_offsetof(struct mm_log, kind),
	MM_LOG_OFF_RESULT = __builtin_offsetof(struct mm_log, result),
	MM_LOG_OFF_PAGES = __builtin_offsetof(struct mm_log, pages),
	MM_LOG_SIZE = sizeof(struct mm_log),
	MM_STATE_OFF_C = MM_STATE_OFF,
};

#endif
