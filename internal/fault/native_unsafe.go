//go:build cgo

package fault

/*
#include "native.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NativeAvailable reports whether this build has the native (C thread) handler.
const NativeAvailable = true

type native struct {
	h      *C.struct_mm_handler
	stopfd int
	srcMap []byte // read-only mapping of a file source
}

// StartNative starts a C thread serving cfg's faults. The thread is not a Go thread: the
// garbage collector never stops it, so goroutines may touch the views with copy() and friends.
func StartNative(cfg Config) (*Handler, error) {
	page := os.Getpagesize()
	if err := cfg.check(page); err != nil {
		return nil, err
	}
	if cfg.Source == SourceNamed {
		return nil, errors.New("fault: a source that is Go code is served by a handler process, not by the C thread")
	}
	if cfg.Restore.active() {
		return nil, errors.New("fault: the C thread does not prefetch: the engine (a handler process) does")
	}
	b, err := newHandlerBlock(&cfg, -1, page)
	if err != nil {
		return nil, err
	}
	stopfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		b.unmap()
		return nil, os.NewSyscallError("eventfd", err)
	}
	var c C.struct_mm_cfg
	c.uffd = C.int(cfg.UFFD.Fd())
	c.stopfd = C.int(stopfd)
	c.src_kind = C.int(cfg.Source)
	c.src_fd = -1
	if cfg.Source == SourceFD {
		c.src_fd = C.int(cfg.SourceFD)
	}
	c.alias_fd = C.int(cfg.AliasFD)
	if cfg.Poison {
		c.poison = 1
	}
	if cfg.NoSpin {
		c.no_spin = 1
	}
	c.src_addr = C.uint64_t(cfg.SourceAddr)
	c.src_off = C.uint64_t(cfg.SourceOff)
	c.src_len = C.uint64_t(cfg.SourceLen)
	c.len = C.uint64_t(cfg.Len)
	c.page = C.uint64_t(page)
	c.max_around = C.uint32_t(max(cfg.MaxAround, 1))
	c.nviews = C.uint32_t(len(cfg.Views))
	for i, v := range cfg.Views {
		c.views[i] = C.uint64_t(v)
	}
	srcMap := mapSource(cfg.Source, cfg.SourceFD, cfg.AliasFD, cfg.SourceOff, cfg.SourceLen, cfg.Len, page)
	if srcMap != nil {
		c.map_addr = C.uint64_t(uintptr(unsafe.Pointer(&srcMap[0])))
		c.map_len = C.uint64_t(len(srcMap))
	}
	c.shared = b.ptr()
	var cerr C.int
	h := C.mm_start(&c, &cerr)
	if h == nil {
		if srcMap != nil {
			unix.Munmap(srcMap)
		}
		unix.Close(stopfd)
		b.unmap()
		return nil, fmt.Errorf("fault: starting the handler thread: %w", unix.Errno(cerr))
	}
	return &Handler{b: b, cfg: cfg, page: page, backend: &native{h: h, stopfd: stopfd, srcMap: srcMap}}, nil
}

func (n *native) stop() error {
	one := [8]byte{1}
	_, err := unix.Write(n.stopfd, one[:])
	if err != nil {
		return os.NewSyscallError("write eventfd", err)
	}
	C.mm_join(n.h)
	n.h = nil
	if n.srcMap != nil {
		unix.Munmap(n.srcMap)
	}
	return unix.Close(n.stopfd)
}

func (n *native) err() error   { return nil }
func (n *native) kind() string { return "native" }
