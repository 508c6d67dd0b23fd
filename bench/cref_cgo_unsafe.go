//go:build cgo

package main

/*
#cgo CFLAGS: -O2 -Wall
#cgo LDFLAGS: -lpthread
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int64_t cref_now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// ---- Suite 1: adjacent ring create + destroy --------------------------------------------

// cref_ring_dup creates and destroys iters adjacent rings of n bytes with the mremap duplicate:
// reserve 2n PROT_NONE, map shared anonymous memory over the first half, duplicate it into the
// second half, unmap. The first ring is checked (a write through one half is read through the
// other). Returns the elapsed nanoseconds, or -errno.
static int64_t cref_ring_dup(size_t n, int iters) {
	int64_t t0 = cref_now();
	for (int i = 0; i < iters; i++) {
		char *res = mmap(NULL, 2 * n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (res == MAP_FAILED) return -errno;
		char *a = mmap(res, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		if (a == MAP_FAILED) { int e = errno; munmap(res, 2 * n); return -e; }
		char *b = mremap(a, 0, n, MREMAP_MAYMOVE | MREMAP_FIXED, res + n);
		if (b == MAP_FAILED) { int e = errno; munmap(res, 2 * n); return -e; }
		if (i == 0) {
			a[n - 1] = 42;
			if (b[n - 1] != 42) { munmap(res, 2 * n); return -EIO; }
		}
		if (munmap(res, 2 * n) != 0) return -errno;
	}
	return cref_now() - t0;
}

// cref_ring_memfd does the same with a memfd mapped twice.
static int64_t cref_ring_memfd(size_t n, int iters) {
	int64_t t0 = cref_now();
	for (int i = 0; i < iters; i++) {
		int fd = memfd_create("ring", MFD_CLOEXEC);
		if (fd < 0) return -errno;
		if (ftruncate(fd, n) != 0) { int e = errno; close(fd); return -e; }
		char *res = mmap(NULL, 2 * n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (res == MAP_FAILED) { int e = errno; close(fd); return -e; }
		char *a = mmap(res, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
		char *b = mmap(res + n, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
		close(fd);
		if (a == MAP_FAILED || b == MAP_FAILED) { munmap(res, 2 * n); return -ENOMEM; }
		if (i == 0) {
			a[n - 1] = 42;
			if (b[n - 1] != 42) { munmap(res, 2 * n); return -EIO; }
		}
		if (munmap(res, 2 * n) != 0) return -errno;
	}
	return cref_now() - t0;
}

// ---- Suite 2: fault serving -----------------------------------------------------------------

enum {
	K_COPY = 0,        // shmem, MISSING, UFFDIO_COPY from the source
	K_ZEROPAGE = 1,    // shmem, MISSING, UFFDIO_ZEROPAGE
	K_CONTINUE = 2,    // shmem already in the page cache, MINOR, UFFDIO_CONTINUE
	K_KERNEL_SHMEM = 3,// no userfaultfd: the kernel's first touch of shared anonymous memory
	K_KERNEL_ANON = 4, // no userfaultfd: first touch of private anonymous memory
	K_COPY_ANON = 5,   // private anonymous, MISSING, UFFDIO_COPY (what userfaultfd-go supports)
};

struct cref_fault_cfg {
	int kind;
	int threads;       // faulting threads
	int random;        // touch pages in a random order (per thread)
	uint64_t seed;
	size_t size;       // region bytes, a multiple of block
	size_t block;      // bytes resolved per fault
	const char *src;   // source of COPY: size bytes
	int pin;           // run the handler and every faulting thread on one CPU
};

struct cref_fault_res {
	int64_t ns;        // from releasing the faulting threads to the last one finishing
	uint64_t faults;   // page-fault messages handled
	uint64_t eexist;   // resolutions that found the range filled (another thread's fault)
	int err;           // errno of the first failure, 0 if none
	int step;          // where it failed
};

static void pin_to(int cpu) {
	if (cpu < 0) return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

struct handler_ctx {
	int uffd, kind, cpu;
	char *start;
	char *start2;      // the mirror view (a duplicate of start), or NULL for one view
	size_t size, block;
	const char *src;
	char *buf;
	uint64_t faults, eexist;
	int err;
};

// resolve fills [base, base+len) of the view that starts at view.
static int resolve(struct handler_ctx *h, char *view, char *base, size_t len) {
	for (;;) {
		int r;
		if (h->kind == K_COPY || h->kind == K_COPY_ANON) {
			// The same work as an io.ReaderAt source: read the bytes into a buffer, then copy them in.
			memcpy(h->buf, h->src + (base - view), len);
			struct uffdio_copy c = { .dst = (uintptr_t)base, .src = (uintptr_t)h->buf, .len = len, .mode = 0 };
			r = ioctl(h->uffd, UFFDIO_COPY, &c);
			if (r != 0 && errno == EAGAIN && c.copy > 0) { base += c.copy; len -= c.copy; continue; }
		} else if (h->kind == K_ZEROPAGE) {
			struct uffdio_zeropage z = { .range = { .start = (uintptr_t)base, .len = len }, .mode = 0 };
			r = ioctl(h->uffd, UFFDIO_ZEROPAGE, &z);
			if (r != 0 && errno == EAGAIN && z.zeropage > 0) { base += z.zeropage; len -= z.zeropage; continue; }
		} else {
			struct uffdio_continue c = { .range = { .start = (uintptr_t)base, .len = len }, .mode = 0 };
			r = ioctl(h->uffd, UFFDIO_CONTINUE, &c);
			if (r != 0 && errno == EAGAIN && c.mapped > 0) { base += c.mapped; len -= c.mapped; continue; }
		}
		if (r == 0) return 0;
		if (errno == EAGAIN) continue;
		if (errno == EEXIST) {
			// Someone filled it first: errors wake nobody, so wake the waiters ourselves.
			struct uffdio_range w = { .start = (uintptr_t)base, .len = len };
			h->eexist++;
			if (ioctl(h->uffd, UFFDIO_WAKE, &w) != 0) return errno;
			return 0;
		}
		return errno;
	}
}

static void *handler(void *arg) {
	struct handler_ctx *h = arg;
	struct uffd_msg msgs[64];
	pin_to(h->cpu);
	for (;;) {
		ssize_t n = read(h->uffd, msgs, sizeof msgs); // blocking; cancelled when the run is over
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN) continue;
			h->err = errno;
			return NULL;
		}
		for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT) { h->err = EPROTO; return NULL; }
			char *addr = (char *)(uintptr_t)msgs[i].arg.pagefault.address;
			char *view = h->start2 && addr >= h->start2 && addr < h->start2 + h->size ? h->start2 : h->start;
			size_t off = (size_t)(addr - view) & ~(h->block - 1);
			size_t len = h->block;
			if (off + len > h->size) len = h->size - off;
			h->faults++;
			// The COPY wakes the faulting thread. A thread blocked on the same page through
			// the other view has its own message: served in turn (EEXIST, then a wake).
			int e = resolve(h, view, view + off, len);
			if (e) { h->err = e; return NULL; }
		}
	}
}

struct toucher {
	char *start;
	char *start2;      // pages from half on are touched through this view, if not NULL
	size_t half;
	uint32_t *pages;   // page indexes to touch, in order
	size_t npages;
	volatile int *go;  // 0: wait, 1: touch, -1: give up (the run could not start)
	volatile int *ready;
	int cpu;
};

static void *touch(void *arg) {
	struct toucher *t = arg;
	pin_to(t->cpu);
	__atomic_add_fetch(t->ready, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(t->go, __ATOMIC_ACQUIRE) == 0) sched_yield();
	if (*t->go < 0) return NULL;
	for (size_t i = 0; i < t->npages; i++)
		*(volatile char *)((t->start2 && t->pages[i] >= t->half ? t->start2 : t->start) +
				   (size_t)t->pages[i] * 4096) = 1; // one store per page
	return NULL;
}

static uint64_t xorshift(uint64_t *s) {
	uint64_t x = *s;
	x ^= x << 13; x ^= x >> 7; x ^= x << 17;
	return *s = x;
}

#define FAIL(st) do { res->err = errno ? errno : EIO; res->step = (st); goto out; } while (0)

// cref_fault_run maps a fresh region, registers it, starts one handler thread and cfg->threads
// faulting threads that store one byte to every page (each thread its own half, in order or
// shuffled), and times the faulting. Afterwards it checks the served bytes.
static void cref_fault_run(const struct cref_fault_cfg *cfg, struct cref_fault_res *res) {
	memset(res, 0, sizeof *res);
	errno = 0;
	size_t n = cfg->size, npages = n / 4096;
	int uffd = -1, memfd = -1, have_handler = 0;
	char *region = MAP_FAILED, *alias = MAP_FAILED, *dup = MAP_FAILED;
	uint32_t *order = NULL;
	pthread_t hth, tth[8];
	struct toucher tt[8];
	struct handler_ctx h = { 0 };
	volatile int go = 0, ready = 0;
	int started = 0;
	int nthreads = cfg->threads < 1 ? 1 : (cfg->threads > 8 ? 8 : cfg->threads);
	int cpu = cfg->pin ? sched_getcpu() : -1;
	int two_views = cfg->kind == K_COPY || cfg->kind == K_ZEROPAGE;
	int uses_uffd = cfg->kind == K_COPY || cfg->kind == K_ZEROPAGE || cfg->kind == K_CONTINUE || cfg->kind == K_COPY_ANON;

	switch (cfg->kind) {
	case K_CONTINUE:
		// The page cache is filled through an unregistered alias; faults on the registered view are minor.
		memfd = memfd_create("cref", MFD_CLOEXEC);
		if (memfd < 0) FAIL(1);
		if (ftruncate(memfd, n) != 0) FAIL(2);
		alias = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, memfd, 0);
		if (alias == MAP_FAILED) FAIL(3);
		for (size_t p = 0; p < npages; p++) alias[p * 4096 + 1] = (char)(p * 7 + 3);
		region = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
		break;
	case K_KERNEL_ANON:
	case K_COPY_ANON:
		region = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		break;
	default:
		region = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	}
	if (region == MAP_FAILED) FAIL(4);
	if (two_views) {
		// The same shape as the library's mirrored pair: a duplicate of the shared mapping,
		// both views registered MISSING|MINOR, half the pages touched through each.
		dup = mremap(region, 0, n, MREMAP_MAYMOVE);
		if (dup == MAP_FAILED) FAIL(14);
	}

	if (uses_uffd) {
		uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
		if (uffd < 0) FAIL(5);
		struct uffdio_api api = { .api = UFFD_API, .features = cfg->kind == K_CONTINUE || two_views ? UFFD_FEATURE_MINOR_SHMEM : 0 };
		if (ioctl(uffd, UFFDIO_API, &api) != 0) FAIL(6);
		struct uffdio_register reg = { .range = { .start = (uintptr_t)region, .len = n },
			.mode = cfg->kind == K_CONTINUE ? UFFDIO_REGISTER_MODE_MINOR : UFFDIO_REGISTER_MODE_MISSING };
		if (two_views) reg.mode |= UFFDIO_REGISTER_MODE_MINOR;
		if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) FAIL(7);
		if (two_views) {
			reg.range.start = (uintptr_t)dup;
			if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) FAIL(15);
			h.start2 = dup;
		}
		h.uffd = uffd; h.kind = cfg->kind; h.start = region; h.size = n; h.block = cfg->block; h.src = cfg->src; h.cpu = cpu;
		if (cfg->kind == K_COPY || cfg->kind == K_COPY_ANON) {
			h.buf = mmap(NULL, cfg->block, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
			if (h.buf == MAP_FAILED) { h.buf = NULL; FAIL(8); }
		}
		if ((errno = pthread_create(&hth, NULL, handler, &h)) != 0) FAIL(9);
		have_handler = 1;
	}

	order = malloc(npages * sizeof *order);
	if (!order) FAIL(10);
	uint64_t seed = cfg->seed | 1;
	size_t per = npages / nthreads;
	for (int t = 0; t < nthreads; t++) {
		size_t lo = t * per, cnt = (t == nthreads - 1) ? npages - lo : per;
		for (size_t i = 0; i < cnt; i++) order[lo + i] = (uint32_t)(lo + i);
		if (cfg->random)
			for (size_t i = cnt - 1; i > 0; i--) {
				size_t j = xorshift(&seed) % (i + 1);
				uint32_t x = order[lo + i]; order[lo + i] = order[lo + j]; order[lo + j] = x;
			}
		tt[t] = (struct toucher){ .start = region, .start2 = two_views ? dup : NULL, .half = npages / 2, .pages = order + lo, .npages = cnt, .go = &go, .ready = &ready, .cpu = cpu };
	}
	for (; started < nthreads; started++)
		if ((errno = pthread_create(&tth[started], NULL, touch, &tt[started])) != 0) FAIL(11);
	while (__atomic_load_n(&ready, __ATOMIC_ACQUIRE) < nthreads) sched_yield();
	int64_t t0 = cref_now();
	__atomic_store_n(&go, 1, __ATOMIC_RELEASE);
	for (int t = 0; t < nthreads; t++) pthread_join(tth[t], NULL);
	res->ns = cref_now() - t0;
	started = 0;

	if (have_handler) {
		pthread_cancel(hth);
		pthread_join(hth, NULL);
		have_handler = 0;
		res->faults = h.faults;
		res->eexist = h.eexist;
		if (h.err) { errno = h.err; FAIL(12); }
	}
	// Check what was served (byte 1 of every page; byte 0 was stored by the toucher).
	for (size_t p = 0; p < npages; p++) {
		char want = 0;
		if (cfg->kind == K_COPY || cfg->kind == K_COPY_ANON) want = cfg->src[p * 4096 + 1];
		else if (cfg->kind == K_CONTINUE) want = (char)(p * 7 + 3);
		// Through the view that touched it: the other view does not map it, and reading it
		// there would raise a minor fault that nobody serves any more.
		const char *v = two_views && p >= npages / 2 ? dup : region;
		if (v[p * 4096 + 1] != want || v[p * 4096] != 1) { errno = EBADMSG; FAIL(13); }
	}
out:
	if (started > 0) { // thread creation failed part way: release the ones waiting
		__atomic_store_n(&go, -1, __ATOMIC_RELEASE);
		for (int t = 0; t < started; t++) pthread_join(tth[t], NULL);
	}
	if (have_handler) { pthread_cancel(hth); pthread_join(hth, NULL); }
	free(order);
	if (h.buf) munmap(h.buf, cfg->block);
	if (uffd >= 0) close(uffd);
	if (region != MAP_FAILED) munmap(region, n);
	if (dup != MAP_FAILED) munmap(dup, n);
	if (alias != MAP_FAILED) munmap(alias, n);
	if (memfd >= 0) close(memfd);
}
*/
import "C"

import (
	"fmt"
	"syscall"
	"unsafe"
)

const cgoEnabled = true

func cRingDup(n, iters int) (int64, error) {
	r := int64(C.cref_ring_dup(C.size_t(n), C.int(iters)))
	if r < 0 {
		return 0, fmt.Errorf("C duplicate ring of %d bytes: %w", n, syscall.Errno(-r))
	}
	return r, nil
}

func cRingMemfd(n, iters int) (int64, error) {
	r := int64(C.cref_ring_memfd(C.size_t(n), C.int(iters)))
	if r < 0 {
		return 0, fmt.Errorf("C memfd ring of %d bytes: %w", n, syscall.Errno(-r))
	}
	return r, nil
}

// cFaultResult is what one C fault-serving run reports.
type cFaultResult struct {
	ns             int64
	faults, eexist uint64
}

// cFaultRun runs one C fault-serving (or kernel first-touch) run. src is used by the COPY kinds
// and must hold size bytes; it is memory the Go collector never moves (a mapping).
func cFaultRun(fc faultCase, seed uint64, src []byte) (cFaultResult, error) {
	cfg := C.struct_cref_fault_cfg{
		kind: C.int(fc.kind), threads: C.int(fc.threads), seed: C.uint64_t(seed),
		size: C.size_t(fc.size), block: C.size_t(fc.block),
	}
	if fc.pinned {
		cfg.pin = 1
	}
	if fc.random {
		cfg.random = 1
	}
	if len(src) > 0 {
		cfg.src = (*C.char)(unsafe.Pointer(&src[0]))
	}
	var res C.struct_cref_fault_res
	C.cref_fault_run(&cfg, &res)
	if res.err != 0 {
		return cFaultResult{}, fmt.Errorf("C %s run failed at step %d: %w", fc.kind, int(res.step), syscall.Errno(res.err))
	}
	return cFaultResult{ns: int64(res.ns), faults: uint64(res.faults), eexist: uint64(res.eexist)}, nil
}
