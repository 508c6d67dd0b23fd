//go:build cgo

// A minimal reference fault handler in plain C, written the way a C programmer would serve a
// mirrored mapping: a blocking read, pread + UFFDIO_COPY for missing faults (fault-around with the
// same doubling window), UFFDIO_CONTINUE for minor ones, UFFDIO_WAKE after an error. No counters,
// no log. Benchmarks compare the native handler against it; nothing else uses it.

#define _GNU_SOURCE
#include "ref.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct ref {
	int uffd, srcfd;
	const char *map; // the source mapped read-only (NULL: pread)
	uint64_t views[2], len, page;
	uint32_t around;
	char *buf;
	uint64_t next[2][2];
	uint32_t win[2][2];
};

static uint64_t ref_window(struct ref *r, int v, int k, uint64_t p) {
	uint64_t n = 1;
	if (r->around > 1) {
		if (p == r->next[v][k])
			r->win[v][k] = r->win[v][k] * 2 > r->around ? r->around : r->win[v][k] * 2;
		else
			r->win[v][k] = 1;
		n = r->win[v][k];
	}
	if (p + n > r->len / r->page)
		n = r->len / r->page - p;
	r->next[v][k] = p + n;
	return n;
}

static void *ref_run(void *arg) {
	struct ref *r = arg;
	struct uffd_msg msgs[64];
	for (;;) {
		// A blocking read (the caller cleared O_NONBLOCK); the thread is cancelled in it.
		ssize_t got = read(r->uffd, msgs, sizeof msgs);
		if (got <= 0) {
			if (got < 0 && errno != EAGAIN && errno != EINTR)
				return NULL;
			continue;
		}
		for (size_t i = 0; i < (size_t)got / sizeof msgs[0]; i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				continue;
			uint64_t a = msgs[i].arg.pagefault.address;
			int v = a >= r->views[1] && a < r->views[1] + r->len;
			uint64_t off = (a - r->views[v]) & ~(r->page - 1);
			if (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) {
				uint64_t n = ref_window(r, v, 1, off / r->page);
				struct uffdio_continue c = {.range = {.start = r->views[v] + off, .len = n * r->page}};
				if (ioctl(r->uffd, UFFDIO_CONTINUE, &c) < 0 && c.mapped <= 0) {
					struct uffdio_range w = {.start = r->views[v] + off, .len = r->page};
					ioctl(r->uffd, UFFDIO_WAKE, &w);
				}
				continue;
			}
			uint64_t n = ref_window(r, v, 0, off / r->page);
			uint64_t len = n * r->page;
			const char *src = r->map ? r->map + off : r->buf;
			if (!r->map) {
				ssize_t rd = pread(r->srcfd, r->buf, len, (off_t)off);
				if (rd < (ssize_t)len)
					memset(r->buf + (rd > 0 ? rd : 0), 0, len - (rd > 0 ? (size_t)rd : 0));
			}
			// The COPY wakes the faulting thread. A thread blocked on the same page through the
			// other view has its own message: served later (EEXIST, then the wake below).
			struct uffdio_copy c = {.dst = r->views[v] + off, .src = (uint64_t)(uintptr_t)src, .len = len};
			if (ioctl(r->uffd, UFFDIO_COPY, &c) < 0 && c.copy <= 0) {
				struct uffdio_range w = {.start = r->views[v] + off, .len = r->page};
				ioctl(r->uffd, UFFDIO_WAKE, &w);
			}
		}
	}
}

// mm_ref_serve_touch starts the reference handler on two registered views, reads one byte of
// every page of view `first` and then of view 1-first from this thread, stops the handler and
// returns the nanoseconds of each pass in ns[0], ns[1]. Returns 0 or an errno.
int mm_ref_serve_touch(int uffd, uint64_t v0, uint64_t v1, uint64_t len, uint64_t page, int srcfd,
		       uint32_t around, int first, int map, uint64_t ns[2]) {
	struct ref r = {.uffd = uffd, .srcfd = srcfd, .views = {v0, v1}, .len = len, .page = page,
			.around = around ? around : 1};
	if (map) {
		// Like the native handler: the kernel copies straight from the source's page cache.
		void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, srcfd, 0);
		if (m == MAP_FAILED)
			return errno;
		r.map = m;
	}
	for (int v = 0; v < 2; v++)
		for (int k = 0; k < 2; k++) {
			r.next[v][k] = UINT64_MAX;
			r.win[v][k] = 1;
		}
	r.buf = malloc((size_t)r.around * page);
	if (!r.buf)
		return ENOMEM;
	// The userfaultfd is the caller's and non-blocking: block while this handler owns it.
	int fl = fcntl(uffd, F_GETFL);
	if (fl < 0 || fcntl(uffd, F_SETFL, fl & ~O_NONBLOCK) != 0)
		return errno;
	pthread_t t;
	int e = pthread_create(&t, NULL, ref_run, &r);
	if (e) {
		fcntl(uffd, F_SETFL, fl);
		return e;
	}
	uint64_t views[2] = {v0, v1};
	for (int pass = 0; pass < 2; pass++) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		mm_touch(views[pass == 0 ? first : 1 - first], len, page);
		clock_gettime(CLOCK_MONOTONIC, &b);
		ns[pass] = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)(b.tv_nsec - a.tv_nsec);
	}
	pthread_cancel(t);
	pthread_join(t, NULL);
	fcntl(uffd, F_SETFL, fl);
	free(r.buf);
	if (r.map)
		munmap((void *)r.map, len);
	return 0;
}

uint64_t mm_touch(uint64_t addr, uint64_t len, uint64_t page) {
	uint64_t s = 0;
	for (uint64_t o = 0; o < len; o += page)
		s += *(volatile uint8_t *)(uintptr_t)(addr + o);
	return s;
}
