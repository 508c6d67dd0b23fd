//go:build cgo

// The watchdog of an in-process Go fault server: a C thread, which the garbage collector never
// stops, that notices when Go code has not run for too long while a thread of the process waits
// in a page fault, and aborts the process with a message naming the cause and the fix instead
// of letting it hang silently.

#define _GNU_SOURCE
#include "native.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct mm_watchdog {
	pthread_t thread;
	int stopfd;
	volatile uint64_t *heartbeat;
	uint64_t timeout_ms;
	char *msg;
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

static uint64_t mono_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void *watch(void *arg) {
	struct mm_watchdog *w = arg;
	uint64_t last = __atomic_load_n(w->heartbeat, __ATOMIC_ACQUIRE);
	uint64_t since = mono_ms();
	struct pollfd pf = {.fd = w->stopfd, .events = POLLIN};
	int period = (int)(w->timeout_ms / 10);
	if (period < 10)
		period = 10;
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
		if (now - since < w->timeout_ms)
			continue;
		int faulting = threads_in_fault();
		if (faulting == 0) {
			since = now; // Go is stopped, but not by a page fault (a debugger?): not ours
			continue;
		}
		fprintf(stderr, "%s\n(the Go runtime has not run for %llu ms; %d thread(s) wait in a page fault)\n", w->msg,
			(unsigned long long)(now - since), faulting);
		fflush(stderr);
		kill(getpid(), SIGABRT);
		struct timespec ts = {.tv_sec = 3};
		nanosleep(&ts, NULL);
		_exit(2); // SIGABRT was caught and ignored: stop anyway, the process cannot go on
	}
}

struct mm_watchdog *mm_watch_start(volatile uint64_t *heartbeat, uint64_t timeout_ms, int stopfd, const char *msg,
				   int *err) {
	struct mm_watchdog *w = calloc(1, sizeof *w);
	if (!w || !(w->msg = strdup(msg))) {
		free(w);
		*err = ENOMEM;
		return NULL;
	}
	w->heartbeat = heartbeat;
	w->timeout_ms = timeout_ms;
	w->stopfd = stopfd;
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
	free(w->msg);
	free(w);
}
