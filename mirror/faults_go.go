package mirror

import (
	"errors"
	"fmt"
	"io"

	"github.com/mirrormem/mirrormem/internal/fault"
	"github.com/mirrormem/mirrormem/uffd"
)

// startGoServing serves the pair in this process (HandlerGo) with the library's one engine,
// watched by a C thread (fault.Watchdog) that aborts the process, with a message, if the
// program hangs the way the package documentation describes (a goroutine faulting inside
// runtime assembly blocks the collector, which blocks the engine's goroutines). src is the
// source the engine reads, nil for the sources it reads itself (zeros, a descriptor).
func startGoServing(sv *serving, fc fault.Config, src io.ReaderAt, f *faultConfig) error {
	onFatal := func(err error) {
		var serr *uffd.SourceError
		if errors.As(err, &serr) {
			// Without UFFDIO_POISON (Linux 6.6) the faulting thread can never get its bytes:
			// end the program loudly rather than leave it blocked forever, or let Close turn
			// the fault into a zero page.
			panic(fmt.Sprintf("mirrormem: ServeFaults(%s): reading the source failed (%v) and this kernel cannot poison the page (UFFDIO_POISON needs Linux 6.6): the thread that touched it could never get its bytes; aborting instead of hanging", sv.srcKind, serr))
		}
	}
	h, err := fault.StartGo(fc, src, onFatal, goCloseWait)
	if err != nil {
		return err
	}
	watchdog := f.watchdog
	if watchdog == 0 {
		watchdog = DefaultWatchdog
	}
	msg := fmt.Sprintf("mirrormem: DEADLOCK: a goroutine touched a page of a mirror served by Go code (ServeFaults with a %s source) "+
		"inside runtime assembly (copy, clear, bytes.Equal, append, ...), which the garbage collector cannot interrupt; the collector "+
		"is waiting for it and the fault server, a goroutine, can never run. Fix: serve Go code from a handler process "+
		"(RegisterSource and NamedSource), call Pair.Populate on a range before touching it with copy(), or touch unfilled pages "+
		"only with plain Go loops or system calls. Aborting instead of hanging.", sv.srcKind)
	wd, err := fault.StartWatchdog(watchdog, msg, h)
	if err != nil {
		h.Stop()
		return err
	}
	sv.h, sv.wd = h, wd
	return nil
}

// goCloseWait bounds how long Close waits for a ReadAt of a Go source in flight (a variable
// for tests).
var goCloseWait = CloseWait
