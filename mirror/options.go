package mirror

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Option configures Mirror and Of.
type Option func(*config)

// config collects the options; every Option fills it, and Mirror/Of validate it once.
type config struct {
	adjacent    bool
	views       int // total number of views, the original included
	backend     Backend
	backendSet  bool
	closeRegion bool
	err         error
	faults      faultConfig
}

func newConfig(opts []Option) *config {
	c := &config{views: 2}
	c.faults.around = -1
	for i, o := range opts {
		if o == nil {
			c.err = fmt.Errorf("%w: option %d is nil", ErrOption, i+1)
			return c
		}
		o(c)
	}
	if c.err == nil {
		c.err = c.faults.check()
	}
	return c
}

// Adjacent lays the views out back to back: the mirror starts exactly where the original ends
// (and with Views(n), view i+1 where view i ends), so Contiguous returns one slice over all of
// them and a ring buffer needs no wrap-around code.
//
// The layout is made race-free: every view is mapped with MREMAP_FIXED/MAP_FIXED over address
// space this package already owns, never by unmapping and hoping to map again at a hint. Where
// the address space after the original comes from:
//
//   - a Region allocated with alloc.WithRoom((n-1)*Len()) lends its room: Original() is
//     r.Bytes(), and Close hands the room back;
//   - otherwise, if the address space right after the original is free, it is claimed with
//     MAP_FIXED_NOREPLACE (which never replaces anything) and Original() is still r.Bytes();
//   - otherwise a fresh reservation of n*Len() bytes is made and every view, the first one
//     included, is a new view of the same pages: Original() is then not r.Bytes() but shows
//     the same memory.
func Adjacent() Option { return func(c *config) { c.adjacent = true } }

// Views asks for n views of the memory in total, the original included (the default is 2: the
// original and one mirror). View(i) returns view i; View(0) is Original() and View(1) Mirror().
// Each view is one kernel mapping: n may not exceed vm.max_map_count (65530 by default), the
// most mappings a process can have (ErrOption); below it, the kernel may still run out (ENOMEM).
func Views(n int) Option {
	return func(c *config) {
		switch {
		case n < 2:
			c.err = fmt.Errorf("%w: Views(%d): a pair needs at least 2 views (the original and a mirror)", ErrOption, n)
			return
		case n > maxMapCount():
			c.err = fmt.Errorf("%w: Views(%d): each view is one mapping, and a process may have at most %d (vm.max_map_count)", ErrOption, n, maxMapCount())
			return
		}
		c.views = n
	}
}

// maxMapCount reads vm.max_map_count (65530, the kernel's default, if it cannot).
func maxMapCount() int {
	b, err := os.ReadFile("/proc/sys/vm/max_map_count")
	if err != nil {
		return 65530
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= 0 {
		return 65530
	}
	return n
}

// WithBackend chooses how the mirror views are made. Without it, BackendDuplicate is used,
// falling back to BackendMemfd if the kernel refuses the duplicate and the memory has a file
// descriptor; Pair.Backend says which was used.
func WithBackend(b Backend) Option {
	return func(c *config) {
		if b != BackendDuplicate && b != BackendMemfd {
			c.err = fmt.Errorf("%w: unknown backend %d", ErrUnsupported, int(b))
		}
		c.backend = b
		c.backendSet = true
	}
}

// CloseRegion makes the Pair own the Region given to Mirror: Pair.Close closes it too, after
// the views (ignored by Of). With Adjacent and a region's room, one munmap then removes the
// region and every view, exactly what a hand-written ring buffer does; Original() is valid
// until the Pair's Close. If Mirror fails, the caller still owns the Region.
func CloseRegion() Option { return func(c *config) { c.closeRegion = true } }
