package fault

import (
	"errors"
	"fmt"

	"github.com/mirrormem/mirrormem/uffd"
)

// SourceKind says where page contents come from. Must match MM_SRC_* in native.h (checked by layout_cgo.go).
type SourceKind int

const (
	// SourceZero fills pages with zeros (UFFDIO_ZEROPAGE).
	SourceZero SourceKind = 0
	// SourceFD reads pages from a file descriptor with pread(2): a regular file, a memfd.
	SourceFD SourceKind = 1
	// SourceMem copies pages from memory of this process (another region): native handler only.
	SourceMem SourceKind = 2
	// SourceNamed is Go code: a constructor registered under SourceName (RegisterSource)
	// builds it from SourceConfig in the handler process, which serves it with a uffd.Server.
	// Handler process only.
	SourceNamed SourceKind = 3
)

// Config describes what a handler serves.
type Config struct {
	UFFD  *uffd.UFFD // registered on every view by the caller; stays the caller's
	Views []uintptr  // the views' addresses, each Len bytes of the same object
	Len   int        // bytes per view, a multiple of the page size

	Source     SourceKind
	SourceFD   int     // SourceFD: the descriptor (stays the caller's)
	SourceAddr uintptr // SourceMem: the bytes (must stay mapped while serving)
	SourceOff  int64   // source offset of the object's first byte
	SourceLen  int64   // bytes the source has from SourceOff; beyond them pages are zeros

	// AliasFD >= 0 selects minor-fault staging: a missing page is written into the page cache
	// through this memfd (the object itself, not registered) and then mapped with
	// UFFDIO_CONTINUE. The views must be registered ModeMissing|ModeMinor. -1: off.
	AliasFD int

	SourceName   string // SourceNamed: the name of the registered constructor
	SourceConfig []byte // SourceNamed: its configuration
	Workers      int    // SourceNamed: goroutines serving faults (several fetch in parallel); 0: 1

	MaxAround int  // fault-around cap in pages; 0 or 1: one page per fault
	LogCap    int  // verification log entries kept (the first LogCap); 0: no log
	Poison    bool // UFFDIO_POISON is usable: a failing source raises SIGBUS on the page instead of aborting
	NoSpin    bool // block as soon as no fault is pending, never spinning first (for comparisons)

	// Restore: the engine fills these ranges (object offsets, in order) ahead of the program,
	// then, with Push, every page left, at most PushRate bytes per second (0: no cap). The C
	// thread does not prefetch: StartNative refuses it.
	Restore Restore

	// Present lists the pages already in the page cache when serving starts (from mincore),
	// so that their minor faults are not taken for invariant violations.
	Present []bool
}

// Restore says what the engine fills besides demand faults.
type Restore struct {
	Prefetch []uffd.PrefetchRange `json:",omitempty"`
	Push     bool                 `json:",omitempty"`
	HoldPush bool                 `json:",omitempty"` // the push waits for Handler.StartPush
	PushRate int64                `json:",omitempty"`
	InFlight int                  `json:",omitempty"` // reads of the source at once; 0: the engine's default
	MaxRange int                  `json:",omitempty"` // bytes per read; 0: the engine's default
}

// active reports whether r asks for anything.
func (r Restore) active() bool { return len(r.Prefetch) > 0 || r.Push }

// MaxLogCap is the most log entries a handler keeps (128 MiB of log): it also keeps the size of
// the shared block far from overflowing.
const MaxLogCap = 1 << 22

func (c *Config) check(pageSize int) error {
	switch {
	case c.UFFD == nil:
		return errors.New("fault: no userfaultfd")
	case len(c.Views) == 0 || len(c.Views) > MaxViews:
		return fmt.Errorf("fault: %d views; between 1 and %d are served", len(c.Views), MaxViews)
	case c.Len <= 0 || c.Len%pageSize != 0:
		return fmt.Errorf("fault: view length %d is not a positive multiple of the page size %d", c.Len, pageSize)
	case c.Source < SourceZero || c.Source > SourceNamed:
		return fmt.Errorf("fault: unknown source kind %d", c.Source)
	case c.Source == SourceNamed && c.SourceName == "":
		return errors.New("fault: SourceNamed without a name")
	case c.Workers < 0 || c.Workers > 256:
		return fmt.Errorf("fault: %d workers is out of range [0, 256]", c.Workers)
	case c.Source == SourceFD && c.SourceFD < 0:
		return errors.New("fault: SourceFD without a descriptor")
	case c.Source == SourceMem && c.SourceAddr == 0 && c.SourceLen > 0:
		return errors.New("fault: SourceMem without an address")
	case c.SourceOff < 0 || c.SourceLen < 0:
		return fmt.Errorf("fault: negative source offset %d or length %d", c.SourceOff, c.SourceLen)
	case c.MaxAround < 0 || c.MaxAround > 1<<16:
		return fmt.Errorf("fault: fault-around of %d pages is out of range [0, 65536]", c.MaxAround)
	case c.Restore.PushRate < 0 || c.Restore.InFlight < 0 || c.Restore.MaxRange < 0:
		return errors.New("fault: negative push rate, reads in flight or read size")
	case c.LogCap < 0 || c.LogCap > MaxLogCap:
		return fmt.Errorf("fault: log capacity %d is out of range [0, %d]", c.LogCap, MaxLogCap)
	}
	for i, v := range c.Views {
		if v%uintptr(pageSize) != 0 {
			return fmt.Errorf("fault: view %d at %#x is not page aligned", i, v)
		}
	}
	return nil
}
