package fault

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/uffd"
)

// serveGoSource serves a source that is Go code with a uffd.Server, in the handler process:
// its garbage collector stops only this process, never the one whose faults it serves. It
// records what it does in the shared block, and stops when the served process hangs up.
func serveGoSource(hp *handlerProcess, src io.ReaderAt) int {
	c := &hp.c
	obs := &blockObserver{b: hp.b, page: int64(c.Page)}
	opts := []uffd.ServerOption{
		uffd.WithFaultAround(max(c.MaxAround, 1) * c.Page),
		uffd.WithObserver(obs),
		uffd.WithWorkers(max(c.Workers, 1)),
	}
	if c.Poison {
		// A failed read poisons the page: the thread that touched it gets SIGBUS, never zeros.
		opts = append(opts, uffd.OnSourceError(uffd.PoisonOnSourceError), uffd.WithErrorHandler(obs.sourceError))
	}
	srv := uffd.NewServer(hp.u, opts...)
	if err := srv.HandleViews(c.Len, zerosPastEnd{src}, c.Views...); err != nil {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: %v\n", err)
		return 2
	}
	if c.Role == "standby" {
		wakeAll(hp.u, c.Views, c.Len)
	}
	go func() {
		// The served process hangs up ParentFD to stop this handler, or by dying.
		pfd := []unix.PollFd{{Fd: int32(c.ParentFD), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(pfd, -1); err != unix.EINTR {
				break
			}
		}
		srv.Close()
	}()
	err := srv.Serve(nil)
	if err == nil || errors.Is(err, uffd.ErrServerClosed) {
		return 0
	}
	var serr *uffd.SourceError
	if errors.As(err, &serr) {
		obs.sourceError(serr)
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: %v; this kernel cannot poison the page (UFFDIO_POISON needs Linux 6.6), so the thread that touched it could never get its bytes: killing the served process %d\n", serr, os.Getppid())
	} else {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: serving stopped: %v; killing the served process %d\n", err, os.Getppid())
	}
	unix.Kill(os.Getppid(), unix.SIGABRT)
	return 3
}

// wakeAll wakes every thread waiting in a fault on the views: each faults again, and its new
// message is read by whoever serves now (a standby that took over from a primary which may
// have died holding a message it had read).
func wakeAll(u *uffd.UFFD, views []uintptr, n int) {
	for _, v := range views {
		u.Wake(v, n)
	}
}

// zerosPastEnd reads a Go source whose end (io.EOF) comes before the end of the views: the
// bytes past it are zeros, as documented for every source.
type zerosPastEnd struct{ src io.ReaderAt }

func (z zerosPastEnd) ReadAt(p []byte, off int64) (int, error) {
	n, err := z.src.ReadAt(p, off)
	if n < len(p) && errors.Is(err, io.EOF) {
		clear(p[n:])
		return len(p), nil
	}
	return n, err
}

// blockObserver records what a uffd.Server does in the shared block, as the other handlers do.
type blockObserver struct {
	b    *block
	page int64
}

func (o *blockObserver) Faulted(view int, off int64, flags uffd.PagefaultFlags) {
	o.b.addHdr(hMsgs, 1)
	switch {
	case flags&uffd.FlagWP != 0:
		o.b.addCtr(view, cWP, 1)
	case flags&uffd.FlagMinor != 0:
		o.b.addCtr(view, cMinor, 1)
	default:
		o.b.addCtr(view, cMissing, 1)
	}
}

func (o *blockObserver) Resolved(view int, off, n int64, how uffd.Resolution) {
	pages := uint64(n / o.page)
	switch how {
	case uffd.Copied, uffd.Zeroed:
		c := cCopied
		if how == uffd.Zeroed {
			c = cZeroed
		}
		o.b.addCtr(view, c, pages)
		o.b.addCtr(view, cBytes, uint64(n))
		for p := int(off / o.page); p < int((off+n)/o.page) && p < o.b.l.npages; p++ {
			if st := o.b.state(p); st == stFilled || st == stPresent {
				o.violation(violTwice, int64(p)*o.page)
			}
			o.b.setState(p, stFilled)
		}
	case uffd.Continued:
		o.b.addCtr(view, cContinued, pages)
	}
}

func (o *blockObserver) Existed(view int, off int64) { o.b.addCtr(view, cEEXIST, 1) }

func (o *blockObserver) violation(code int, off int64) {
	if o.b.casHdr(hViolations, 0, 1) {
		o.b.setHdr(hViolOff, uint64(off))
		o.b.setHdr(hViolCode, uint64(code))
		return
	}
	o.b.addHdr(hViolations, 1)
}

// sourceError records a failed read of the source (its page poisoned by the server).
func (o *blockObserver) sourceError(err error) {
	var serr *uffd.SourceError
	if !errors.As(err, &serr) {
		return
	}
	var e unix.Errno
	errors.As(serr.Err, &e)
	o.b.setHdr(hErrOff, uint64(serr.Offset))
	o.b.setHdr(hErrno, uint64(e))
	o.b.putErrText(serr.Err.Error())
	o.b.addHdr(hErrors, 1)
}
