//go:build cgo

// The watchdog of an in-process Go fault server: a C thread, which the garbage collector never
// stops, that notices when Go code has not run for too long while a thread of the process waits
// in a page fault, and aborts the process with a message naming the cause and the fix instead
// of letting it hang silently.
//
// Before that, it rescues what needs no Go code. A page already filled can lose its page-table
// entry in a view at any time: reclaim (kswapd, DAMON, MADV_PAGEOUT) unmaps shared memory
// without freeing it when there is no swap. The next touch through a view registered for minor
// faults then waits for the Go server, which cannot run while the collector waits for that
// touch (inside runtime assembly). So, once Go code has stood still for the rescue delay with a
// thread in a page fault, the watchdog maps every filled page that is missing from a view's
// page table (UFFDIO_CONTINUE, which wakes the thread), counting them in C_RESCUED. A touch of a
// page never filled still needs the source, and so Go code: that one ends in the abort.

#define _GNU_SOURCE
#include "native.h"

#include <dirent.h>
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
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((uint64_t)1 << 1) // 6.3
#endif

struct mm_watchdog {
	pthread_t thread;
	int stopfd;
	volatile uint64_t *heartbeat;
	uint64_t timeout_ms;
	uint64_t period_ms; // how often it looks (the heartbeat beats as often)
	char *msg;
	struct mm_rescue r; // r.nviews == 0: no rescue
	int pagemap;        // /proc/self/pagemap, opened at the first rescue (-1: not yet or failed)
};

// threads_in_fault counts the threads of this process sleeping outside any system call: for a
// process whose Go code stopped running, that is a thread blocked in a page fault.
static int threads_in_fault(void) {
	DIR *d = opendir("/proc/self/task");
	if (!d)
		return -1;
	int n = 0;
	pid_t self = (pid_t)syscall(SYS_gettid);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == self)
			continue;
		char path[64], buf[256];
		snprintf(path, sizeof path, "/proc/self/task/%s/syscall", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(buf, sizeof buf, f) && strncmp(buf, "-1 ", 3) == 0)
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

// faulting samples threads_in_fault up to 10 times, a millisecond apart, and returns the first
// count that is not 0 (-1: /proc cannot tell, so any thread may be). A thread that the collector keeps signalling (to stop it) leaves its fault at
// each signal and faults again: one look can find it between the two.
static int faulting(void) {
	int n = 0;
	for (int i = 0; i < 10 && n == 0; i++) {
		if (i > 0) {
			struct timespec ts = {.tv_nsec = 1000000};
			nanosleep(&ts, NULL);
		}
		n = threads_in_fault();
	}
	return n;
}

static uint64_t mono_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define PM_CHUNK 512

// present reads the page-table presence of npages pages from addr into out (1: mapped). On a
// failure to read /proc/self/pagemap every page counts as absent: UFFDIO_CONTINUE then answers
// EEXIST for the mapped ones, at the cost of a system call each.
static void present(struct mm_watchdog *w, uint64_t addr, uint64_t npages, uint8_t *out) {
	uint64_t e[PM_CHUNK];
	ssize_t got = -1;
	if (w->pagemap >= 0)
		got = pread(w->pagemap, e, npages * 8, (off_t)(addr / w->r.page * 8));
	for (uint64_t i = 0; i < npages; i++)
		out[i] = got == (ssize_t)(npages * 8) ? (uint8_t)(e[i] >> 63) : 0;
}

// rescue maps, in every view, the filled pages missing from its page table, and returns how
// many it mapped.
static uint64_t rescue(struct mm_watchdog *w) {
	struct mm_rescue *r = &w->r;
	if (__atomic_load_n(&r->hdr[H_CLOSING], __ATOMIC_ACQUIRE))
		return 0;
	if (w->pagemap < 0)
		w->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t total = 0;
	uint8_t in[PM_CHUNK];
	for (uint32_t v = 0; v < r->nviews; v++) {
		int wp = (__atomic_load_n(&r->hdr[H_TRACKED], __ATOMIC_ACQUIRE) >> v) & 1;
		uint64_t mapped = 0;
		for (uint64_t p0 = 0; p0 < r->npages; p0 += PM_CHUNK) {
			uint64_t n = r->npages - p0 < PM_CHUNK ? r->npages - p0 : PM_CHUNK;
			present(w, r->views[v] + p0 * r->page, n, in);
			for (uint64_t i = 0; i < n; i++) {
				uint8_t st = __atomic_load_n(&r->state[p0 + i], __ATOMIC_ACQUIRE);
				// A page never filled is left to the server, which counts a minor fault on it
				// as a violation (unless it was staged); a reset page may be back in the page
				// cache (MADV_DONTNEED keeps it there) or not (then CONTINUE answers EFAULT).
				if (in[i] || st == ST_EMPTY)
					continue;
				struct uffdio_continue c = {
					.range = {.start = r->views[v] + (p0 + i) * r->page, .len = r->page},
					.mode = wp ? UFFDIO_CONTINUE_MODE_WP : 0,
				};
				if (ioctl(r->uffd, UFFDIO_CONTINUE, &c) == 0) {
					mapped++;
					continue;
				}
				// EINVAL, ENOENT: the view is not registered for minor faults (the kernel
				// maps its filled pages itself) or no longer registered: leave it.
				// EEXIST: mapped meanwhile; EFAULT: not in the page cache (reset, or its
				// fill still on the way); EAGAIN: the layout is changing. None is ours.
				if (errno == EINVAL || errno == ENOENT)
					goto next;
			}
		}
	next:
		if (mapped)
			__atomic_fetch_add(&r->counters[v * C_WORDS + C_RESCUED], mapped, __ATOMIC_RELAXED);
		total += mapped;
	}
	return total;
}

static void *watch(void *arg) {
	struct mm_watchdog *w = arg;
	uint64_t last = __atomic_load_n(w->heartbeat, __ATOMIC_ACQUIRE);
	uint64_t since = mono_ms();
	struct pollfd pf = {.fd = w->stopfd, .events = POLLIN};
	int period = (int)w->period_ms;
	uint64_t rescue_ms = w->timeout_ms / 2 < 1000 ? w->timeout_ms / 2 : 1000;
	uint64_t rescued = 0; // when it last rescued
	for (;;) {
		int r = poll(&pf, 1, period);
		if (r > 0 || (r < 0 && errno != EINTR))
			return NULL;
		uint64_t hb = __atomic_load_n(w->heartbeat, __ATOMIC_ACQUIRE);
		uint64_t now = mono_ms();
		if (hb != last) {
			last = hb;
			since = now;
			continue;
		}
		if (w->r.nviews && now - since >= rescue_ms && now - rescued >= rescue_ms && faulting() != 0) {
			rescued = now;
			rescue(w);
		}
		if (now - since < w->timeout_ms)
			continue;
		int nfault = faulting();
		if (nfault == 0) {
			since = now; // Go is stopped, but not by a page fault (a debugger?): not ours
			continue;
		}
		fprintf(stderr, "%s\n(the Go runtime has not run for %llu ms; %d thread(s) wait in a page fault)\n", w->msg,
			(unsigned long long)(now - since), nfault);
		fflush(stderr);
		kill(getpid(), SIGABRT);
		struct timespec ts = {.tv_sec = 3};
		nanosleep(&ts, NULL);
		_exit(2); // SIGABRT was caught and ignored: stop anyway, the process cannot go on
	}
}

struct mm_watchdog *mm_watch_start(volatile uint64_t *heartbeat, uint64_t timeout_ms, uint64_t period_ms, int stopfd,
				   const char *msg, const struct mm_rescue *r, int *err) {
	struct mm_watchdog *w = calloc(1, sizeof *w);
	if (!w || !(w->msg = strdup(msg))) {
		free(w);
		*err = ENOMEM;
		return NULL;
	}
	w->heartbeat = heartbeat;
	w->timeout_ms = timeout_ms;
	w->period_ms = period_ms < 10 ? 10 : period_ms;
	w->stopfd = stopfd;
	w->pagemap = -1;
	if (r)
		w->r = *r;
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	int e = pthread_create(&w->thread, NULL, watch, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e) {
		free(w->msg);
		free(w);
		*err = e;
		return NULL;
	}
	return w;
}

void mm_watch_join(struct mm_watchdog *w) {
	pthread_join(w->thread, NULL);
	if (w->pagemap >= 0)
		close(w->pagemap);
	free(w->msg);
	free(w);
}
