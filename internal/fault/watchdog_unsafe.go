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

// StartWatchdog starts the watchdog; msg is printed before the abort.
func StartWatchdog(timeout time.Duration, msg string) (*Watchdog, error) {
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
	var cerr C.int
	w := &Watchdog{beat: beat, stopfd: stopfd, done: make(chan struct{})}
	w.w = C.mm_watch_start((*C.uint64_t)(unsafe.Pointer(&beat[0])), C.uint64_t(timeout/time.Millisecond), C.int(stopfd), cmsg, &cerr)
	if w.w == nil {
		unix.Close(stopfd)
		unix.Munmap(beat)
		return nil, fmt.Errorf("fault: starting the watchdog thread: %w", unix.Errno(cerr))
	}
	// The heartbeat: any goroutine that runs proves the world is not stopped.
	period := timeout / 10
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
