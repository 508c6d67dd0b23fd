//go:build cgo

package fault

/*
#include <stdlib.h>
#include "native.h"
*/
import "C"

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Watchdog aborts the process, with a message, when Go code has stopped running for longer
// than its timeout while a thread waits in a page fault: the signature of the garbage
// collector waiting for a goroutine stuck in a fault that only Go code (an in-process fault
// server) could resolve. It is a C thread, so the collector cannot stop it.
type Watchdog struct {
	w      *C.struct_mm_watchdog
	beat   []byte // mapped outside the Go heap: the C thread reads it
	stopfd int
	done   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

// StartWatchdog starts the watchdog; msg is printed before the abort. With h (the in-process
// server it watches; nil for none) it also rescues what needs no Go code: once Go code has stood
// still for half the timeout (at most a second) while a thread waits in a page fault, it maps
// every filled page missing from a view's page table, as reclaim leaves them (see watchdog.c).
// The caller stops the watchdog before h.
func StartWatchdog(timeout time.Duration, msg string, h *Handler) (*Watchdog, error) {
	if timeout < 10*time.Millisecond {
		return nil, fmt.Errorf("fault: watchdog timeout %v is too short (at least 10ms)", timeout)
	}
	beat, err := unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Munmap(beat)
		return nil, os.NewSyscallError("eventfd", err)
	}
	cmsg := C.CString(msg)
	defer C.free(unsafe.Pointer(cmsg))
	var rescue *C.struct_mm_rescue
	if h != nil {
		rescue = h.rescue()
		defer C.free(unsafe.Pointer(rescue))
	}
	// The heartbeat beats, and the C thread looks, every tenth of the timeout, at most every
	// 100 ms: often enough to tell a stall of the rescue's delay from an idle heartbeat.
	period := min(timeout/10, 100*time.Millisecond)
	var cerr C.int
	w := &Watchdog{beat: beat, stopfd: stopfd, done: make(chan struct{})}
	w.w = C.mm_watch_start((*C.uint64_t)(unsafe.Pointer(&beat[0])), C.uint64_t(timeout/time.Millisecond),
		C.uint64_t(period/time.Millisecond), C.int(stopfd), cmsg, rescue, &cerr)
	if w.w == nil {
		unix.Close(stopfd)
		unix.Munmap(beat)
		return nil, fmt.Errorf("fault: starting the watchdog thread: %w", unix.Errno(cerr))
	}
	// The heartbeat: any goroutine that runs proves the world is not stopped.
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		p := (*uint64)(unsafe.Pointer(&beat[0]))
		for {
			select {
			case <-w.done:
				return
			case <-t.C:
				atomic.AddUint64(p, 1)
			}
		}
	}()
	return w, nil
}

// Stop stops the watchdog. Idempotent.
func (w *Watchdog) Stop() {
	w.once.Do(func() {
		close(w.done)
		w.wg.Wait()
		one := [8]byte{1}
		unix.Write(w.stopfd, one[:])
		C.mm_watch_join(w.w)
		unix.Close(w.stopfd)
		unix.Munmap(w.beat)
	})
}

// rescue describes h's views and block for the watchdog (C memory: the caller frees it).
func (h *Handler) rescue() *C.struct_mm_rescue {
	r := (*C.struct_mm_rescue)(C.calloc(1, C.size_t(unsafe.Sizeof(C.struct_mm_rescue{}))))
	r.uffd = C.int(h.cfg.UFFD.Fd())
	r.nviews = C.uint32_t(len(h.cfg.Views))
	r.npages = C.uint64_t(h.cfg.Len / h.page)
	r.page = C.uint64_t(h.page)
	for i, v := range h.cfg.Views {
		r.views[i] = C.uint64_t(v)
	}
	r.hdr = (*C.uint64_t)(unsafe.Pointer(&h.b.mem[0]))
	r.counters = (*C.uint64_t)(unsafe.Pointer(&h.b.mem[h.b.l.counters]))
	r.state = (*C.uint8_t)(unsafe.Pointer(&h.b.mem[h.b.l.state]))
	return r
}
