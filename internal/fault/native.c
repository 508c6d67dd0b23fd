//go:build cgo

#define _GNU_SOURCE
#include "native.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// UFFDIO_POISON (6.6) is newer than some installed headers.
struct mm_uffdio_poison {
	struct uffdio_range range;
	uint64_t mode;
	int64_t updated;
};
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((uint64_t)1 << 1) // 6.3
#endif
#define MM_UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct mm_uffdio_poison)

// The adaptive spin before the thread blocks: the policy of uffd.Server's spin (see
// uffd/server_spin.go for why), with the same constants. A thread that blocks in the kernel
// and is woken on another, idle CPU pays for that CPU's wake-up, which on a virtual machine
// costs more than serving a 4 KiB fault. So while faults come close together the thread first
// polls the userfaultfd without blocking, for about twice the recent gap between faults and
// never more than SPIN_CAP_NS; a spin that ends without a message disarms it, and only a wait
// shorter than SPIN_REARM_NS (the wake-up included) arms it again. A program that stops
// faulting costs at most one spin, then nothing.
#define SPIN_CAP_NS 50000ull
#define SPIN_MIN_NS 5000ull
#define SPIN_REARM_NS 100000ull

struct mm_spin {
	uint64_t gap; // recent time from ready to a message, ns
	int armed;
	int off; // never spin (mm_cfg.no_spin)
};

static uint64_t spin_budget(const struct mm_spin *s) {
	if (!s->armed || s->off)
		return 0;
	uint64_t b = 2 * s->gap;
	if (b < SPIN_MIN_NS)
		b = SPIN_MIN_NS;
	return b > SPIN_CAP_NS ? SPIN_CAP_NS : b;
}

// spin_waited records a wait that lasted waited ns from the thread being ready to a message
// in hand, found while spinning (hit) or after blocking.
static void spin_waited(struct mm_spin *s, uint64_t waited, int hit) {
	if (hit) {
		s->gap = (s->gap + waited) / 2;
		return;
	}
	s->armed = waited < SPIN_REARM_NS;
	if (s->armed)
		s->gap = waited < SPIN_CAP_NS ? waited : SPIN_CAP_NS;
}

// Layout of the shared block: keep in sync with layout.go.
struct mm_handler {
	struct mm_cfg cfg;
	pthread_t thread;
	uint64_t *hdr;
	uint64_t *counters;
	uint8_t *state;
	uint8_t *dirty;
	struct mm_log *log;
	uint64_t npages, logcap;
	char *buf; // max_around pages of staging buffer for pread
	uint8_t *saved; // page states before a fast-path fill, to undo a failed one
	char *zeros;
	// sequential detection per view and kind: next expected page and current window
	uint64_t next[MM_MAX_VIEWS][2];
	uint32_t win[MM_MAX_VIEWS][2];
	// backlog of page faults read while draining events
	struct uffd_msg *backlog;
	size_t nbacklog, capbacklog;
	// Blocking reads (see run): the uffd's file status flags before, and the stop page, a
	// private page registered on the uffd whose fault tells the thread to stop (NULL: the
	// thread polls the stop eventfd instead).
	int oldfl;
	char *stoppage;
	int stopping; // the stop page faulted
	int nonblock; // blocking reads: the descriptor's file is non-blocking now (see set_nonblock)
	struct mm_spin spin;
	int src_sealed; // the file source is sealed against shrinking: see shrink_sealed
};

#define ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t *ctr(struct mm_handler *h, int v, int c) { return &h->counters[v * C_WORDS + c]; }

// record appends a log entry and returns its index (-1 if it was not kept).
static int64_t record(struct mm_handler *h, int v, uint64_t off, int kind, int result, uint32_t tid,
		      uint32_t pages) {
	if (h->logcap == 0)
		return -1;
	uint64_t i = h->hdr[H_LOGNEXT]; // single writer
	if (i < h->logcap) {
		struct mm_log *e = &h->log[i];
		e->time_ns = now_ns();
		e->off = off;
		e->tid = tid;
		e->view = (uint8_t)v;
		e->kind = (uint8_t)kind;
		e->result = (uint8_t)result;
		e->pages = pages;
	}
	STORE(&h->hdr[H_LOGNEXT], i + 1);
	return i < h->logcap ? (int64_t)i : -1;
}

// amend corrects the result and page count of an entry written before its ioctl failed.
static void amend(struct mm_handler *h, int64_t i, int result, uint32_t pages) {
	if (i < 0)
		return;
	__atomic_store_n(&h->log[i].result, (uint8_t)result, __ATOMIC_RELAXED);
	__atomic_store_n(&h->log[i].pages, pages, __ATOMIC_RELAXED);
}

#define SUB(p, v) __atomic_fetch_sub((p), (v), __ATOMIC_RELAXED)

static void violation(struct mm_handler *h, int code, uint64_t off) {
	if (ADD(&h->hdr[H_VIOLATIONS], 1) == 0) {
		STORE(&h->hdr[H_VIOL_OFF], off);
		STORE(&h->hdr[H_VIOL_CODE], (uint64_t)code);
	}
}

// mark records that pages [p, p+n) were filled by this handler, checking the invariant that a
// page is filled at most once (a page reset by MADV_REMOVE/DONTNEED may be filled again).
static void mark_filled(struct mm_handler *h, uint64_t p, uint64_t n) {
	for (uint64_t i = p; i < p + n && i < h->npages; i++) {
		uint8_t s = h->state[i];
		if (s == ST_FILLED || s == ST_PRESENT)
			violation(h, V_TWICE, i * h->cfg.page);
		__atomic_store_n(&h->state[i], ST_FILLED, __ATOMIC_RELEASE);
	}
}

static int find_view(struct mm_handler *h, uint64_t addr, uint64_t *off) {
	for (uint32_t v = 0; v < h->cfg.nviews; v++) {
		uint64_t a = h->cfg.views[v];
		if (addr >= a && addr < a + h->cfg.len) {
			*off = (addr - a) & ~(h->cfg.page - 1);
			return (int)v;
		}
	}
	return -1;
}

static void wake(struct mm_handler *h, int v, uint64_t off, uint64_t len) {
	struct uffdio_range r = {.start = h->cfg.views[v] + off, .len = len};
	if (ioctl(h->cfg.uffd, UFFDIO_WAKE, &r) == 0)
		ADD(ctr(h, v, C_WAKES), 1);
}

static void wake_others(struct mm_handler *h, int v, uint64_t off, uint64_t len) {
	for (uint32_t w = 0; w < h->cfg.nviews; w++)
		if ((int)w != v)
			wake(h, (int)w, off, len);
}

static void read_events(struct mm_handler *h);

// tracked reports whether view v is under dirty tracking: pages mapped into it are mapped
// write-protected, so that their first write raises a write-protect fault.
static int tracked(struct mm_handler *h, int v) { return (LOAD(&h->hdr[H_TRACKED]) >> v) & 1; }

// shrink_sealed reports whether file fd is sealed against shrinking (F_SEAL_SHRINK, memfds and
// other shmem files): its size can then never drop below what it had when serving began (a
// seal is never removed), so fill_src skips the size check after each read.
// That check is a system call per fault, as much as the 4 KiB pread itself on some machines.
static int shrink_sealed(int fd) {
	int seals = fcntl(fd, F_GET_SEALS);
	return seals >= 0 && (seals & F_SEAL_SHRINK);
}

// fill_src reads the source for the n bytes at object offset off into buf: the bytes the source
// had when serving began (src_len), then zeros. It returns how many bytes of buf are ready, n
// or, when the source fails or ends early (it shrank), the whole pages read before that point;
// 0 with *err set when not even the first page could be read.
static uint64_t fill_src(struct mm_handler *h, char *buf, uint64_t off, uint64_t n, int *err) {
	uint64_t have = 0;
	*err = 0;
	if (off < h->cfg.src_len)
		have = h->cfg.src_len - off < n ? h->cfg.src_len - off : n;
	if (h->cfg.src_kind == MM_SRC_MEM) {
		memcpy(buf, (const char *)(uintptr_t)(h->cfg.src_addr + off), have);
	} else if (h->cfg.src_kind == MM_SRC_FD) {
		uint64_t done = 0;
		while (done < have) {
			ssize_t r = pread(h->cfg.src_fd, buf + done, have - done, (off_t)(h->cfg.src_off + off + done));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				// A read error, or the source ended before the length it had when serving
				// began (it was truncated): never zeros in place of its bytes.
				*err = r < 0 ? errno : ENODATA;
				uint64_t pages = done / h->cfg.page * h->cfg.page;
				return pages;
			}
			done += (uint64_t)r;
		}
		// A read racing a truncation of a tmpfs file can return zeros for the pages the
		// truncation removed (the read takes no lock against it, and a hole reads as zeros).
		// The size is set before pages go, so the size after the read bounds what was read.
		// A file sealed against shrinking needs no such check (see shrink_sealed).
		struct stat st;
		if (have > 0 && !h->src_sealed) {
			if (fstat(h->cfg.src_fd, &st) < 0) {
				*err = errno;
				return 0;
			}
			uint64_t left = (uint64_t)st.st_size > h->cfg.src_off + off ? (uint64_t)st.st_size - h->cfg.src_off - off : 0;
			if (left < have) {
				*err = ENODATA;
				return left / h->cfg.page * h->cfg.page;
			}
		}
	} else {
		have = 0;
	}
	if (have < n)
		memset(buf + have, 0, n - have);
	return n;
}

static void source_failed(struct mm_handler *h, int v, uint64_t off, int err, uint32_t tid) {
	if (h->cfg.poison) {
		// A page filled through another view since this fault was raised holds the source's
		// bytes already: map it here (UFFDIO_CONTINUE, on a view registered for minor
		// faults) rather than poison it. EEXIST: it is mapped here already.
		struct uffdio_continue c = {.range = {.start = h->cfg.views[v] + off, .len = h->cfg.page}};
		int cerr = ioctl(h->cfg.uffd, UFFDIO_CONTINUE, &c) < 0 ? errno : 0;
		if (c.mapped > 0 || cerr == EEXIST) {
			ADD(ctr(h, v, c.mapped > 0 ? C_CONTINUED : C_EEXIST), 1);
			record(h, v, off, K_MISSING, c.mapped > 0 ? R_CONTINUED : R_EEXIST, tid, 1);
			wake(h, v, off, h->cfg.page);
			return;
		}
	}
	ADD(&h->hdr[H_ERRORS], 1);
	STORE(&h->hdr[H_ERR_OFF], off);
	STORE(&h->hdr[H_ERRNO], (uint64_t)err);
	record(h, v, off, K_MISSING, R_ERROR, tid, 1);
	if (h->cfg.poison) {
		// The page is lost in every view: poison it in each (EEXIST: that view maps it
		// already; ENOENT: the view is unregistered, its pair closing), then wake every view,
		// so that no thread waits on it anywhere.
		int ok = 1;
		for (uint32_t w = 0; w < h->cfg.nviews; w++) {
			struct mm_uffdio_poison p = {.range = {.start = h->cfg.views[w] + off, .len = h->cfg.page},
						     .mode = 1 /* DONTWAKE */};
			if (ioctl(h->cfg.uffd, MM_UFFDIO_POISON, &p) != 0 && errno != EEXIST && errno != ENOENT &&
			    w == (uint32_t)v)
				ok = 0;
		}
		if (ok) {
			for (uint32_t w = 0; w < h->cfg.nviews; w++)
				wake(h, (int)w, off, h->cfg.page);
			return;
		}
	}
	fprintf(stderr,
		"mirrormem: fault handler: reading the source at offset %llu failed: %s; the faulting thread "
		"can never get its page, aborting\n",
		(unsigned long long)off, strerror(err));
	abort();
}

// around returns how many pages to resolve from page p of view v, for a fault of kind k
// (0 = missing, 1 = minor): 1 unless the view's faults are sequential, then a window that
// doubles per sequential fault up to max_around, cut at the end of the object and, for missing
// faults, at the first page this handler already filled.
static uint64_t around(struct mm_handler *h, int v, int k, uint64_t p) {
	uint64_t n = 1;
	if (h->cfg.max_around > 1) {
		if (p == h->next[v][k]) {
			uint32_t w = h->win[v][k] * 2;
			h->win[v][k] = w > h->cfg.max_around ? h->cfg.max_around : w;
		} else {
			h->win[v][k] = 1;
		}
		n = h->win[v][k];
	}
	if (p + n > h->npages)
		n = h->npages - p;
	if (k == 0) {
		for (uint64_t i = 1; i < n; i++) {
			uint8_t s = __atomic_load_n(&h->state[p + i], __ATOMIC_ACQUIRE);
			if (s == ST_FILLED || s == ST_PRESENT) {
				n = i;
				break;
			}
		}
	}
	h->next[v][k] = p + n;
	return n;
}

// refill reads the fault's window again with pread after a COPY from the source's mapping
// failed (the file shrank under it), from done bytes on: it shortens the window to the pages the
// source still has, or, if it has none of them, fails the page at done and returns 0.
static int refill(struct mm_handler *h, int v, uint64_t p, uint32_t tid, uint64_t *n, uint64_t *len,
		  uint64_t done) {
	uint64_t pg = h->cfg.page, off = p * pg;
	int err;
	uint64_t got = fill_src(h, h->buf, off, *len, &err);
	if (got <= done) {
		source_failed(h, v, off + done, err, tid);
		return 0;
	}
	if (got < *len) {
		*n = got / pg;
		*len = got;
		h->next[v][0] = p + *n;
	}
	return 1;
}

// missing is one MISSING fault while it is served: page p of view v, the window of n pages
// (len bytes at off) that one fill covers, and how far the fill has come.
struct missing {
	int v;
	uint32_t tid;
	uint64_t p, n, off, len;
	uint64_t done;   // bytes of the window filled so far
	const char *src; // the bytes to copy, or NULL for zeros
	int mapped;      // src points into the source's mapping (a truncated file makes COPY fail)
	int wp;          // the view tracks writes: fill write-protected
	int result;      // R_* for the log
};

// missing_src points m->src at the window's bytes: the source's memory or mapping where it can
// (zero-copy), else h->buf filled with pread; NULL for zeros. It returns 0 when the source had
// none of the window's bytes (the fault has failed).
static int missing_src(struct mm_handler *h, struct missing *m) {
	uint64_t pg = h->cfg.page;
	if (h->cfg.src_kind == MM_SRC_ZERO && h->cfg.alias_fd < 0)
		return 1;
	if (h->cfg.src_kind == MM_SRC_MEM && m->off + m->len <= h->cfg.src_len) {
		m->src = (const char *)(uintptr_t)(h->cfg.src_addr + m->off); // zero-copy
	} else if (h->cfg.src_kind == MM_SRC_FD && h->cfg.alias_fd < 0 && m->off + m->len <= h->cfg.map_len) {
		// Only a file sealed against shrinking is mapped (mapSource): its bytes cannot go.
		m->src = (const char *)(uintptr_t)(h->cfg.map_addr + m->off); // the kernel copies from the page cache
		m->mapped = 1;
	} else {
		int err;
		uint64_t got = fill_src(h, h->buf, m->off, m->len, &err);
		if (got == 0) {
			source_failed(h, m->v, m->off, err, m->tid);
			return 0;
		}
		if (got < m->len) {
			// Serve the pages the source still had; the rest fault again.
			m->n = got / pg;
			m->len = got;
			h->next[m->v][0] = m->p + m->n;
		}
		m->src = h->buf;
	}
	return 1;
}

// fill_waking fills the whole window with one COPY or ZEROPAGE that wakes the faulting thread,
// retrying while a non-cooperative event is pending. It returns the errno (0 on success) and
// sets *got to what the kernel filled.
static int fill_waking(struct mm_handler *h, struct missing *m, long *got) {
	for (;;) {
		int err;
		if (m->src) {
			struct uffdio_copy c = {.dst = h->cfg.views[m->v] + m->off, .src = (uint64_t)(uintptr_t)m->src,
						.len = m->len, .mode = m->wp ? UFFDIO_COPY_MODE_WP : 0};
			err = ioctl(h->cfg.uffd, UFFDIO_COPY, &c) < 0 ? errno : 0;
			*got = c.copy;
		} else {
			struct uffdio_zeropage z = {.range = {.start = h->cfg.views[m->v] + m->off, .len = m->len}};
			err = ioctl(h->cfg.uffd, UFFDIO_ZEROPAGE, &z) < 0 ? errno : 0;
			*got = z.zeropage;
		}
		if (err == EAGAIN && *got <= 0) {
			ADD(ctr(h, m->v, C_EAGAIN), 1);
			read_events(h); // an event is pending: read it, then retry
			continue;
		}
		return err;
	}
}

// missing_fast is the common case (a page not known to be filled): it accounts for the fill
// first, then lets the resolving ioctl wake the faulting thread itself. When its access returns
// the statistics and the log include it, and no extra UFFDIO_WAKE is spent on it. It returns 1
// when the fault is finished, 0 when what is left of the window goes to the slow path (the
// accounting of what was not filled undone). *logi is the log entry written.
static int missing_fast(struct mm_handler *h, struct missing *m, int64_t *logi) {
	uint64_t pg = h->cfg.page, n = m->n, p = m->p;
	int v = m->v;
	int ck = m->src ? C_COPIED : C_ZEROED;
	m->result = m->src ? R_COPIED : R_ZEROED;
	for (uint64_t i = 0; i < n; i++)
		h->saved[i] = __atomic_load_n(&h->state[p + i], __ATOMIC_ACQUIRE);
	mark_filled(h, p, n);
	ADD(ctr(h, v, ck), n);
	ADD(ctr(h, v, C_BYTES), m->len);
	if (n > 1)
		ADD(ctr(h, v, C_AROUND), n - 1);
	*logi = record(h, v, m->off, K_MISSING, m->result, m->tid, (uint32_t)n);
	long got;
	int err = fill_waking(h, m, &got);
	if (err == 0) {
		// No UFFDIO_WAKE of the other views here. A thread blocked on these pages through
		// another view queued its own message (the kernel queues one per blocked fault and
		// only a wake removes it); this handler reads it later and ends it: COPY there
		// answers EEXIST and the slow path wakes that view, or a MINOR fault is resolved by
		// UFFDIO_CONTINUE, which wakes it. A wake here would find nobody in the common case
		// and cost one system call per fault.
		return 1;
	}
	// Undo the accounting of what was not filled, and finish on the slow path.
	m->done = got > 0 ? (uint64_t)got : 0;
	SUB(ctr(h, v, ck), (m->len - m->done) / pg);
	SUB(ctr(h, v, C_BYTES), m->len - m->done);
	if (n > 1)
		SUB(ctr(h, v, C_AROUND), n - 1);
	for (uint64_t i = m->done / pg; i < n; i++)
		__atomic_store_n(&h->state[p + i], h->saved[i], __ATOMIC_RELEASE);
	if (m->done > 0)
		wake_others(h, v, m->off, m->done);
	if (err == EFAULT && m->mapped) {
		if (!refill(h, v, p, m->tid, &m->n, &m->len, m->done))
			return 1;
		m->src = h->buf;
		m->mapped = 0;
	}
	return 0;
}

// fill_step fills from m->done on with one non-waking STAGE+CONTINUE, ZEROPAGE or COPY. It
// returns the errno (0 on success) and sets *got to what the kernel filled; -1 when the
// staging write failed (the fault has failed).
static int fill_step(struct mm_handler *h, struct missing *m, long *got) {
	uint64_t a = h->cfg.views[m->v] + m->off + m->done, rest = m->len - m->done;
	if (h->cfg.alias_fd >= 0) {
		// Staging: write the page cache through the unregistered alias, then map it here.
		m->result = R_STAGED;
		ssize_t w;
		while ((w = pwrite(h->cfg.alias_fd, m->src + m->done, rest, (off_t)(m->off + m->done))) < 0 &&
		       errno == EINTR)
			;
		if (w < 0) {
			source_failed(h, m->v, m->off + m->done, errno, m->tid);
			return -1;
		}
		ADD(ctr(h, m->v, C_STAGED), (uint64_t)w / h->cfg.page);
		struct uffdio_continue c = {.range = {.start = a, .len = (uint64_t)w},
					    .mode = UFFDIO_CONTINUE_MODE_DONTWAKE | (m->wp ? UFFDIO_CONTINUE_MODE_WP : 0)};
		int err = ioctl(h->cfg.uffd, UFFDIO_CONTINUE, &c) < 0 ? errno : 0;
		*got = c.mapped;
		return err;
	}
	if (m->src == NULL) {
		m->result = R_ZEROED;
		struct uffdio_zeropage z = {.range = {.start = a, .len = rest}, .mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE};
		int err = ioctl(h->cfg.uffd, UFFDIO_ZEROPAGE, &z) < 0 ? errno : 0;
		*got = z.zeropage;
		return err;
	}
	struct uffdio_copy c = {.dst = a, .src = (uint64_t)(uintptr_t)(m->src + m->done), .len = rest,
				.mode = UFFDIO_COPY_MODE_DONTWAKE | (m->wp ? UFFDIO_COPY_MODE_WP : 0)};
	int err = ioctl(h->cfg.uffd, UFFDIO_COPY, &c) < 0 ? errno : 0;
	*got = c.copy;
	return err;
}

// missing_slow fills the rest of the window without waking, page by page past pages someone
// else filled first. It returns 0 when the fault has failed (or the source is gone), 1 when the
// window is done and the views are to be woken.
static int missing_slow(struct mm_handler *h, struct missing *m) {
	uint64_t pg = h->cfg.page;
	int v = m->v;
	while (m->done < m->len) {
		long got;
		int err = fill_step(h, m, &got);
		if (err < 0)
			return 0;
		if (got > 0) {
			mark_filled(h, (m->off + m->done) / pg, (uint64_t)got / pg);
			ADD(ctr(h, v, m->result == R_ZEROED ? C_ZEROED : m->result == R_STAGED ? C_CONTINUED : C_COPIED),
			    (uint64_t)got / pg);
			ADD(ctr(h, v, C_BYTES), (uint64_t)got);
			m->done += (uint64_t)got;
			if (err == EAGAIN)
				continue; // short: finish the rest
		}
		if (err == 0)
			continue;
		if (err == EEXIST) {
			// Someone filled this page first (through another view, or the user staged it):
			// errors never wake, so wake the faulting range ourselves and go on past it.
			ADD(ctr(h, v, C_EEXIST), 1);
			if (m->done == 0)
				m->result = R_EEXIST;
			m->done += pg;
			if (h->cfg.alias_fd >= 0 || got <= 0)
				break; // nothing more to do for this fault: stop fault-around here
			continue;
		}
		if (err == EAGAIN) {
			ADD(ctr(h, v, C_EAGAIN), 1);
			read_events(h); // a non-cooperative event is pending: read it, then retry
			continue;
		}
		if (err == ENOENT) {
			// The view is no longer registered: the pair is closing, and its Close wakes and
			// fails every thread left waiting there. Nothing to fill.
			break;
		}
		if (err == EFAULT && m->mapped) {
			// The file shrank under its mapping: read what is left with pread.
			if (!refill(h, v, m->p, m->tid, &m->n, &m->len, m->done))
				return 0;
			m->src = h->buf;
			m->mapped = 0;
			continue;
		}
		if (err == EFAULT && h->cfg.alias_fd >= 0 && got <= 0) {
			// A staged page vanished before CONTINUE (MADV_REMOVE raced): retry the fault.
			break;
		}
		source_failed(h, v, m->off + m->done, err, m->tid);
		return 0;
	}
	return 1;
}

// resolve_missing serves a MISSING fault at page p of view v: one fill for the shared page
// (and fault-around pages), then a wake on every view.
static void resolve_missing(struct mm_handler *h, int v, uint64_t p, uint32_t tid) {
	uint64_t pg = h->cfg.page;
	struct missing m = {.v = v, .tid = tid, .p = p, .result = R_COPIED};
	ADD(ctr(h, v, C_MISSING), 1);
	m.n = around(h, v, 0, p);
	m.off = p * pg;
	m.len = m.n * pg;
	if (!missing_src(h, &m))
		return;
	m.wp = tracked(h, v);
	if (m.wp && m.src == NULL) {
		// UFFDIO_ZEROPAGE has no write-protect mode: copy zeros instead.
		memset(h->buf, 0, m.len);
		m.src = h->buf;
	}
	int64_t logi = -1;
	int fast = 0;
	uint8_t s0 = __atomic_load_n(&h->state[p], __ATOMIC_ACQUIRE);
	if (h->cfg.alias_fd < 0 && s0 != ST_FILLED && s0 != ST_PRESENT) {
		fast = 1;
		if (missing_fast(h, &m, &logi))
			return;
	}
	if (!missing_slow(h, &m))
		return;
	// Counters, states and log are written before anyone wakes: when the faulting access
	// returns, the statistics include it. Then wake every view: the kernel would wake only the
	// view it filled, and a thread blocked on the same page through another view would wait
	// for its own message.
	if (m.n > 1)
		ADD(ctr(h, v, C_AROUND), m.n - 1);
	if (fast)
		amend(h, logi, m.result, (uint32_t)m.n);
	else
		record(h, v, m.off, K_MISSING, m.result, tid, (uint32_t)m.n);
	wake(h, v, m.off, m.len);
	wake_others(h, v, m.off, m.len);
}

// resolve_minor serves a MINOR fault: the page is in the page cache (filled through another
// view), so map it in this view with UFFDIO_CONTINUE.
static void resolve_minor(struct mm_handler *h, int v, uint64_t p, uint32_t tid) {
	uint64_t pg = h->cfg.page;
	ADD(ctr(h, v, C_MINOR), 1);
	uint8_t s = __atomic_load_n(&h->state[p], __ATOMIC_ACQUIRE);
	if (s == ST_EMPTY && h->cfg.alias_fd < 0)
		violation(h, V_MINOR_UNFILLED, p * pg);
	uint64_t n = around(h, v, 1, p);
	uint64_t off = p * pg;
	int result = R_CONTINUED;
	// Fast path: account first, let UFFDIO_CONTINUE wake the thread (see resolve_missing).
	int wpm = tracked(h, v) ? UFFDIO_CONTINUE_MODE_WP : 0;
	ADD(ctr(h, v, C_CONTINUED), n);
	if (n > 1)
		ADD(ctr(h, v, C_AROUND), n - 1);
	int64_t logi = record(h, v, off, K_MINOR, R_CONTINUED, tid, (uint32_t)n);
	struct uffdio_continue fc = {.range = {.start = h->cfg.views[v] + off, .len = n * pg}, .mode = wpm};
	int ferr = ioctl(h->cfg.uffd, UFFDIO_CONTINUE, &fc) < 0 ? errno : 0;
	if (ferr == 0)
		return;
	uint64_t fm = fc.mapped > 0 ? (uint64_t)fc.mapped : 0;
	SUB(ctr(h, v, C_CONTINUED), n - fm / pg);
	if (n > 1)
		SUB(ctr(h, v, C_AROUND), n - 1);
	if (fm > 0) {
		// Fault-around stopped at a page already mapped here or not in the page cache: the
		// faulting page is mapped, and CONTINUE woke its thread.
		if (fm / pg > 1)
			ADD(ctr(h, v, C_AROUND), fm / pg - 1);
		amend(h, logi, R_CONTINUED, (uint32_t)(fm / pg));
		return;
	}
	for (;;) {
		struct uffdio_continue c = {.range = {.start = h->cfg.views[v] + off, .len = n * pg},
					    .mode = UFFDIO_CONTINUE_MODE_DONTWAKE | (tracked(h, v) ? UFFDIO_CONTINUE_MODE_WP : 0)};
		int err = ioctl(h->cfg.uffd, UFFDIO_CONTINUE, &c) < 0 ? errno : 0;
		if (c.mapped > 0)
			ADD(ctr(h, v, C_CONTINUED), (uint64_t)c.mapped / pg);
		if (err == 0)
			break;
		if (c.mapped > 0) {
			// Fault-around stopped at a page already mapped here (EEXIST) or not in the
			// page cache (EFAULT): the faulting page is done, and CONTINUE woke it.
			break;
		}
		if (err == EAGAIN) {
			ADD(ctr(h, v, C_EAGAIN), 1);
			read_events(h);
			continue;
		}
		if (n > 1) {
			n = 1; // a neighbour was the problem: serve the faulting page alone
			continue;
		}
		if (err == EEXIST) {
			ADD(ctr(h, v, C_EEXIST), 1);
			result = R_EEXIST;
		}
		// EEXIST: already mapped; EFAULT: removed meanwhile (the retried access will raise a
		// missing fault). Either way the thread is woken below.
		break;
	}
	if (n > 1)
		ADD(ctr(h, v, C_AROUND), n - 1);
	amend(h, logi, result, (uint32_t)n);
	wake(h, v, off, n * pg);
}

static void resolve_wp(struct mm_handler *h, int v, uint64_t p, uint32_t tid) {
	uint64_t pg = h->cfg.page;
	ADD(ctr(h, v, C_WP), 1);
	if (h->dirty[v * h->npages + p] == 0) {
		__atomic_store_n(&h->dirty[v * h->npages + p], 1, __ATOMIC_RELEASE);
		ADD(ctr(h, v, C_DIRTY), 1);
	}
	struct uffdio_writeprotect w = {.range = {.start = h->cfg.views[v] + p * pg, .len = pg},
					.mode = UFFDIO_WRITEPROTECT_MODE_DONTWAKE};
	while (ioctl(h->cfg.uffd, UFFDIO_WRITEPROTECT, &w) < 0 && errno == EAGAIN)
		read_events(h);
	record(h, v, p * pg, K_WP, R_UNPROTECTED, tid, 1);
	wake(h, v, p * pg, pg);
}

static void on_remove(struct mm_handler *h, uint64_t start, uint64_t end) {
	ADD(&h->hdr[H_REMOVES], 1);
	for (uint32_t v = 0; v < h->cfg.nviews; v++) {
		uint64_t a = h->cfg.views[v], b = a + h->cfg.len;
		uint64_t s = start > a ? start : a, e = end < b ? end : b;
		if (s >= e)
			continue;
		// MADV_DONTNEED keeps the page cached, MADV_REMOVE frees it: both arrive as REMOVE,
		// so the page may legitimately be filled again.
		for (uint64_t p = (s - a) / h->cfg.page; p < (e - a + h->cfg.page - 1) / h->cfg.page; p++)
			__atomic_store_n(&h->state[p], ST_RESET, __ATOMIC_RELEASE);
		record(h, (int)v, s - a, K_REMOVE, R_RESET, 0, (uint32_t)((e - s) / h->cfg.page));
	}
}

static void handle(struct mm_handler *h, struct uffd_msg *m) {
	ADD(&h->hdr[H_MSGS], 1);
	switch (m->event) {
	case UFFD_EVENT_PAGEFAULT: {
		if (h->stoppage && m->arg.pagefault.address - (uint64_t)(uintptr_t)h->stoppage < h->cfg.page) {
			h->stopping = 1;
			return;
		}
		uint64_t off;
		int v = find_view(h, m->arg.pagefault.address, &off);
		if (v < 0)
			return; // not ours: cannot happen with one uffd per object
		uint64_t p = off / h->cfg.page;
		uint32_t tid = m->arg.pagefault.feat.ptid;
		if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)
			resolve_wp(h, v, p, tid);
		else if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR)
			resolve_minor(h, v, p, tid);
		else
			resolve_missing(h, v, p, tid);
		break;
	}
	case UFFD_EVENT_REMOVE:
		on_remove(h, m->arg.remove.start, m->arg.remove.end);
		break;
	default:
		break;
	}
}

// set_nonblock switches the userfaultfd between non-blocking reads (spinning, draining events)
// and blocking ones (waiting), in the blocking-read mode (run_blocking). poll(2) cannot tell
// whether a message is pending on a blocking userfaultfd (it answers POLLERR), so a spin reads.
static void set_nonblock(struct mm_handler *h, int on) {
	if (h->nonblock == on)
		return;
	int fl = on ? h->oldfl | O_NONBLOCK : h->oldfl & ~O_NONBLOCK;
	if (fcntl(h->cfg.uffd, F_SETFL, fl) == 0)
		h->nonblock = on;
}

// read_events drains the uffd without blocking: events are handled at once (they are what makes
// the resolving ioctls answer EAGAIN), page faults are kept for later.
static void read_events(struct mm_handler *h) {
	struct uffd_msg msgs[64];
	for (;;) {
		if (h->stoppage)
			set_nonblock(h, 1); // read only what is there
		ssize_t r = read(h->cfg.uffd, msgs, sizeof msgs);
		if (r <= 0)
			return;
		for (size_t i = 0; i < (size_t)r / sizeof msgs[0]; i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT) {
				handle(h, &msgs[i]);
				continue;
			}
			if (h->nbacklog == h->capbacklog) {
				size_t c = h->capbacklog ? h->capbacklog * 2 : 64;
				struct uffd_msg *b = realloc(h->backlog, c * sizeof *b);
				if (!b) {
					fprintf(stderr, "mirrormem: fault handler: out of memory\n");
					abort();
				}
				h->backlog = b;
				h->capbacklog = c;
			}
			h->backlog[h->nbacklog++] = msgs[i];
		}
	}
}

// spin_poll polls pf (the uffd, and the stop eventfd if nfds is 2) without blocking for the
// spin's budget from t0. It returns 1 when something is ready (pf's revents say what), 0 when
// the spin was not armed or ran out (then the caller blocks).
static int spin_poll(struct mm_handler *h, uint64_t t0, struct pollfd *pf, int nfds) {
	uint64_t budget = spin_budget(&h->spin);
	if (budget == 0)
		return 0;
	do {
		if (poll(pf, (nfds_t)nfds, 0) > 0) {
			ADD(&h->hdr[H_SPIN_HITS], 1);
			return 1;
		}
	} while (now_ns() - t0 < budget);
	ADD(&h->hdr[H_SPIN_MISSES], 1);
	h->spin.armed = 0;
	return 0;
}

// run_blocking serves with blocking reads: one system call per wait instead of poll + read
// (after a spin of non-blocking reads, while faults come close together). It
// stops when the stop page faults (mm_join touches it), then unregisters the page, which wakes
// the toucher.
static void run_blocking(struct mm_handler *h) {
	struct uffd_msg msgs[64];
	for (;;) {
		while (h->nbacklog > 0 && !h->stopping) {
			struct uffd_msg m = h->backlog[--h->nbacklog];
			handle(h, &m);
		}
		if (h->stopping)
			break;
		ADD(&h->hdr[H_LOOPS], 1);
		uint64_t t0 = now_ns();
		ssize_t r = 0;
		int hit = 0;
		uint64_t budget = spin_budget(&h->spin);
		if (budget > 0) {
			// Spin: non-blocking reads until a message comes or the budget is spent.
			set_nonblock(h, 1);
			do {
				r = read(h->cfg.uffd, msgs, sizeof msgs);
			} while (r < 0 && (errno == EAGAIN || errno == EINTR) && now_ns() - t0 < budget);
			hit = r > 0;
			ADD(&h->hdr[hit ? H_SPIN_HITS : H_SPIN_MISSES], 1);
			if (!hit)
				h->spin.armed = 0;
		}
		if (!hit) {
			set_nonblock(h, 0);
			r = read(h->cfg.uffd, msgs, sizeof msgs);
		}
		if (r > 0) {
			spin_waited(&h->spin, now_ns() - t0, hit);
			for (size_t i = 0; i < (size_t)r / sizeof msgs[0]; i++)
				handle(h, &msgs[i]);
			continue;
		}
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		break; // the uffd was closed under us
	}
	struct uffdio_range sr = {.start = (uint64_t)(uintptr_t)h->stoppage, .len = h->cfg.page};
	ioctl(h->cfg.uffd, UFFDIO_UNREGISTER, &sr);
}

static void *run(void *arg) {
	struct mm_handler *h = arg;
	STORE(&h->hdr[H_TID], (uint64_t)gettid());
	if (h->stoppage) {
		run_blocking(h);
		return NULL;
	}
	struct uffd_msg msgs[64];
	struct pollfd pf[2] = {{.fd = h->cfg.uffd, .events = POLLIN}, {.fd = h->cfg.stopfd, .events = POLLIN}};
	// The uffd is non-blocking (it is shared with Go's poller), so a wait is a poll then a read.
	// Wait first unless the last read filled the whole batch: after a short read the queue is
	// almost always empty (the woken thread has not faulted again yet), and a read that answers
	// EAGAIN before every poll would be one more system call per fault.
	int more = 1;
	for (;;) {
		while (h->nbacklog > 0) {
			struct uffd_msg m = h->backlog[--h->nbacklog];
			handle(h, &m);
		}
		ADD(&h->hdr[H_LOOPS], 1);
		uint64_t t0 = 0;
		int hit = 0;
		if (!more) {
			t0 = now_ns();
			hit = spin_poll(h, t0, pf, 2);
		}
		if (!more) {
			if (!hit && poll(pf, 2, -1) < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			if (pf[1].revents)
				break;
			if (pf[0].revents & (POLLERR | POLLHUP | POLLNVAL))
				break;
		}
		ssize_t r = read(h->cfg.uffd, msgs, sizeof msgs);
		if (r > 0 && t0 != 0)
			spin_waited(&h->spin, now_ns() - t0, hit);
		if (r > 0) {
			size_t got = (size_t)r / sizeof msgs[0];
			for (size_t i = 0; i < got; i++)
				handle(h, &msgs[i]);
			more = got == sizeof msgs / sizeof msgs[0];
			continue;
		}
		more = 0;
		if (r < 0 && errno != EAGAIN && errno != EINTR)
			break; // the uffd was closed under us
	}
	return NULL;
}

struct mm_handler *mm_start(const struct mm_cfg *cfg, int *err) {
	struct mm_handler *h = calloc(1, sizeof *h);
	if (!h) {
		*err = ENOMEM;
		return NULL;
	}
	h->cfg = *cfg;
	h->spin.off = cfg->no_spin;
	h->src_sealed = cfg->src_kind == MM_SRC_FD && shrink_sealed(cfg->src_fd);
	h->hdr = cfg->shared;
	h->npages = h->hdr[H_NPAGES];
	h->logcap = h->hdr[H_LOGCAP];
	char *base = cfg->shared;
	h->counters = (uint64_t *)(base + MM_COUNTERS_OFF);
	h->state = (uint8_t *)(base + MM_STATE_OFF);
	h->dirty = (uint8_t *)(base + MM_DIRTY_OFF(h->npages));
	h->log = (struct mm_log *)(base + MM_LOG_OFF(h->npages));
	for (int v = 0; v < MM_MAX_VIEWS; v++)
		for (int k = 0; k < 2; k++) {
			h->next[v][k] = UINT64_MAX;
			h->win[v][k] = 1;
		}
	size_t bl = (size_t)cfg->max_around * cfg->page;
	if (bl < cfg->page)
		bl = cfg->page;
	h->buf = mmap(NULL, bl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->saved = calloc(cfg->max_around ? cfg->max_around : 1, 1);
	if (h->buf == MAP_FAILED || !h->saved) {
		*err = h->buf == MAP_FAILED ? errno : ENOMEM;
		if (h->buf != MAP_FAILED)
			munmap(h->buf, bl);
		free(h->saved);
		free(h);
		return NULL;
	}
	// Wait in a blocking read, like a C handler that owns its userfaultfd: the descriptor is
	// Go's too, but no Go code reads it while this thread serves; its flags are restored by
	// mm_join. Stopping is then a fault on a private page registered for that purpose (a read
	// returns only messages). Without that page the thread polls the uffd and the stop eventfd.
	// The thread uses a descriptor of its own then, so that the number it reads from never
	// names another file, whatever the Go side closes.
	int fl = fcntl(cfg->uffd, F_GETFL);
	int fd2 = fl >= 0 ? fcntl(cfg->uffd, F_DUPFD_CLOEXEC, 3) : -1;
	if (fd2 >= 0) {
		char *sp = mmap(NULL, cfg->page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (sp != MAP_FAILED) {
			madvise(sp, cfg->page, MADV_DONTFORK);
			struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)sp, .len = cfg->page},
						      .mode = UFFDIO_REGISTER_MODE_MISSING};
			if (ioctl(cfg->uffd, UFFDIO_REGISTER, &reg) == 0) {
				if (!(fl & O_NONBLOCK) || fcntl(cfg->uffd, F_SETFL, fl & ~O_NONBLOCK) == 0) {
					h->stoppage = sp;
					h->oldfl = fl;
					h->cfg.uffd = fd2;
				} else {
					ioctl(cfg->uffd, UFFDIO_UNREGISTER, &reg.range);
				}
			}
			if (!h->stoppage)
				munmap(sp, cfg->page);
		}
		if (!h->stoppage)
			close(fd2);
	}
	// Block every signal in the handler thread: the Go runtime's signals (preemption, profiling)
	// are for Go threads, and a stray one must not interrupt serving.
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int e = pthread_create(&h->thread, NULL, run, h);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e != 0) {
		if (h->stoppage) {
			fcntl(h->cfg.uffd, F_SETFL, h->oldfl);
			struct uffdio_range sr = {.start = (uint64_t)(uintptr_t)h->stoppage, .len = cfg->page};
			ioctl(h->cfg.uffd, UFFDIO_UNREGISTER, &sr);
			munmap(h->stoppage, cfg->page);
			close(h->cfg.uffd);
		}
		munmap(h->buf, bl);
		free(h->saved);
		free(h);
		*err = e;
		return NULL;
	}
	return h;
}

void mm_join(struct mm_handler *h) {
	if (h->stoppage) {
		// A fault the handler reads as "stop"; if it stopped already, the page is unregistered
		// and this is an ordinary fault.
		*(volatile char *)h->stoppage = 1;
	}
	pthread_join(h->thread, NULL);
	if (h->stoppage) {
		fcntl(h->cfg.uffd, F_SETFL, h->oldfl);
		munmap(h->stoppage, h->cfg.page);
		close(h->cfg.uffd);
	}
	munmap(h->buf, (size_t)(h->cfg.max_around ? h->cfg.max_around : 1) * h->cfg.page);
	free(h->backlog);
	free(h->saved);
	free(h);
}
