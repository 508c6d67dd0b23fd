package fault

import (
	"fmt"

	"golang.org/x/sys/unix"
	"strings"
	"sync"
	"time"
)

// Handler is a running fault handler: a native C thread, a handler process, or the Go engine
// in this process (StartGo). Its counters,
// page states and log live in a block that both sides read and write atomically.
type Handler struct {
	b       *block
	backend backend
	cfg     Config
	page    int

	stopOnce sync.Once
	stopErr  error
}

type backend interface {
	stop() error
	err() error
	kind() string
}

// Kind names the handler: "native" (a C thread), "process" (a handler process) or "go".
func (h *Handler) Kind() string { return h.backend.kind() }

// Err returns nil while the handler serves, or why it no longer can.
func (h *Handler) Err() error { return h.backend.err() }

// Stop stops serving and releases what the handler owns (not the UFFD nor the source). Faults
// raised after Stop are not served: unregister or close the UFFD first. Idempotent.
func (h *Handler) Stop() error {
	h.stopOnce.Do(func() {
		h.b.setHdr(hClosing, 1)
		h.stopErr = h.backend.stop()
		if k, ok := h.backend.(interface{ keepsBlock() bool }); ok && k.keepsBlock() {
			return // still in use by a server finishing a read; it unmaps the block itself
		}
		if err := h.b.unmap(); h.stopErr == nil {
			h.stopErr = err
		}
	})
	return h.stopErr
}

// ViewStats counts what a handler did for one view.
type ViewStats struct {
	Missing   uint64 // missing faults served
	Minor     uint64 // minor faults served (page already in the page cache)
	WP        uint64 // write-protect faults
	Copied    uint64 // pages filled with UFFDIO_COPY
	Zeroed    uint64 // pages filled with UFFDIO_ZEROPAGE
	Continued uint64 // pages mapped with UFFDIO_CONTINUE
	Staged    uint64 // pages written through the memfd alias before CONTINUE
	EEXIST    uint64 // resolves refused because the page was already there
	EAGAIN    uint64 // resolves retried because an event was pending
	Wakes     uint64 // UFFDIO_WAKE calls on this view
	Around    uint64 // extra pages resolved by fault-around
	Bytes     uint64 // bytes filled through this view
	Dirty     uint64 // pages first written since dirty tracking (re)started
	Rescued   uint64 // filled pages the watchdog mapped while Go code could not run (StartGo)
}

// Stats is a snapshot of a handler's counters.
type Stats struct {
	Views      []ViewStats
	Messages   uint64 // userfaultfd messages read
	Removes    uint64 // UFFD_EVENT_REMOVE (MADV_DONTNEED/MADV_REMOVE) events
	Violations uint64 // invariant violations seen (0 unless something is wrong)
	Violation  string // the first violation, in words
	Errors     uint64 // source read errors
	Error      string // the last one
	Takeovers  uint64 // handler process deaths survived by the standby
}

// Stats returns a snapshot of the counters.
func (h *Handler) Stats() Stats {
	b := h.b
	s := Stats{
		Messages:   b.hdr(hMsgs),
		Removes:    b.hdr(hRemoves),
		Violations: b.hdr(hViolations),
		Errors:     b.hdr(hErrors),
		Takeovers:  b.hdr(hTakeovers),
	}
	for v := range h.cfg.Views {
		s.Views = append(s.Views, ViewStats{
			Missing: b.ctr(v, cMissing), Minor: b.ctr(v, cMinor), WP: b.ctr(v, cWP),
			Copied: b.ctr(v, cCopied), Zeroed: b.ctr(v, cZeroed), Continued: b.ctr(v, cContinued),
			Staged: b.ctr(v, cStaged), EEXIST: b.ctr(v, cEEXIST), EAGAIN: b.ctr(v, cEAGAIN),
			Wakes: b.ctr(v, cWakes), Around: b.ctr(v, cAround), Bytes: b.ctr(v, cBytes),
			Dirty: b.ctr(v, cDirty), Rescued: b.ctr(v, cRescued),
		})
	}
	if s.Violations > 0 {
		s.Violation = violationText(b.hdr(hViolCode), int64(b.hdr(hViolOff)))
	}
	if s.Errors > 0 {
		s.Error = sourceErrorText(int64(b.hdr(hErrOff)), unix.Errno(b.hdr(hErrno)))
		if t := b.errText(); t != "" {
			s.Error = fmt.Sprintf("reading the source at offset %d: %s", b.hdr(hErrOff), t)
		}
	}
	return s
}

// Violation codes, shared with native.c.
const (
	violTwice         = 1
	violMinorUnfilled = 2
)

func violationText(code uint64, off int64) string {
	switch code {
	case violTwice:
		return fmt.Sprintf("page at offset %d was filled twice (a second fill of a page already in the page cache)", off)
	case violMinorUnfilled:
		return fmt.Sprintf("minor fault at offset %d on a page no handler filled (filled behind the handler's back)", off)
	}
	return fmt.Sprintf("violation %d at offset %d", code, off)
}

// sourceErrorText says why the source failed at offset off.
func sourceErrorText(off int64, e unix.Errno) string {
	if e == unix.ENODATA {
		return fmt.Sprintf("the source ended at offset %d, before the length it had when serving began (truncated?)", off)
	}
	return fmt.Sprintf("reading the source at offset %d: %v", off, e)
}

// Kind is what raised a log entry.
type Kind uint8

// Log entry kinds, shared with native.c.
const (
	KindMissing Kind = 1 // missing fault
	KindMinor   Kind = 2 // minor fault
	KindWP      Kind = 3 // write-protect fault
	KindRemove  Kind = 4 // UFFD_EVENT_REMOVE
)

// String names the kind ("missing", "minor", "wp", "remove").
func (k Kind) String() string {
	switch k {
	case KindMissing:
		return "missing"
	case KindMinor:
		return "minor"
	case KindWP:
		return "wp"
	case KindRemove:
		return "remove"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Result is how a log entry was resolved.
type Result uint8

// Results, shared with native.c.
const (
	ResultCopied      Result = 1 // filled with UFFDIO_COPY
	ResultZeroed      Result = 2 // filled with UFFDIO_ZEROPAGE
	ResultStaged      Result = 3 // written through the alias, mapped with UFFDIO_CONTINUE
	ResultContinued   Result = 4 // mapped from the page cache with UFFDIO_CONTINUE
	ResultExists      Result = 5 // EEXIST: someone filled it first; waiters woken
	ResultError       Result = 6 // the source failed
	ResultUnprotected Result = 7 // write-protection lifted, page marked dirty
	ResultReset       Result = 8 // pages dropped by madvise: may be filled again
)

// String names the result ("copied", "zeroed", ...).
func (r Result) String() string {
	switch r {
	case ResultCopied:
		return "copied"
	case ResultZeroed:
		return "zeroed"
	case ResultStaged:
		return "staged+continued"
	case ResultContinued:
		return "continued"
	case ResultExists:
		return "exists"
	case ResultError:
		return "error"
	case ResultUnprotected:
		return "unprotected"
	case ResultReset:
		return "reset"
	}
	return fmt.Sprintf("result(%d)", uint8(r))
}

// Entry is one verification log record.
type Entry struct {
	Time   int64  // CLOCK_MONOTONIC, nanoseconds
	Offset int64  // byte offset of the page in the object
	Thread uint32 // faulting thread id (0 for events)
	View   int    // which view faulted
	Kind   Kind
	Result Result
	Pages  int // pages resolved (more than 1 with fault-around)
}

// String formats the entry on one line.
func (e Entry) String() string {
	return fmt.Sprintf("view %d off %#x %s -> %s (%d pages, tid %d)", e.View, e.Offset, e.Kind, e.Result, e.Pages, e.Thread)
}

// Log returns the verification log so far (the first LogCap entries) and how many entries were
// dropped once it was full.
func (h *Handler) Log() (entries []Entry, dropped uint64) {
	n := h.b.hdr(hLogNext)
	c := uint64(h.b.l.logcap)
	if n > c {
		dropped = n - c
		n = c
	}
	entries = make([]Entry, n)
	for i := range entries {
		entries[i] = h.b.entry(i)
	}
	return entries, dropped
}

// Filled reports whether page p was filled by the handler (or was present before serving).
func (h *Handler) Filled(p int) bool {
	s := h.b.state(p)
	return s == stFilled || s == stPresent
}

// FilledPages counts the pages filled by the handler or present before serving.
func (h *Handler) FilledPages() int {
	n := 0
	for p := 0; p < h.b.l.npages; p++ {
		if h.Filled(p) {
			n++
		}
	}
	return n
}

// Dirty reports whether page p of view v was written since dirty tracking (re)started.
func (h *Handler) Dirty(v, p int) bool { return h.b.dirty(v, p) }

// ClearDirty forgets page p of view v's dirty bit (before write-protecting it again).
func (h *Handler) ClearDirty(v, p int) { h.b.setDirty(v, p, false) }

// SetTracked marks view v as under dirty tracking (or not): pages the handler maps into it from
// then on are mapped write-protected, so that their first write is seen.
func (h *Handler) SetTracked(v int, on bool) {
	for {
		old := h.b.hdr(hTracked)
		nw := old &^ (1 << v)
		if on {
			nw |= 1 << v
		}
		if h.b.casHdr(hTracked, old, nw) {
			return
		}
	}
}

// Tracked reports whether view v is under dirty tracking (SetTracked).
func (h *Handler) Tracked(v int) bool { return h.b.hdr(hTracked)&(1<<v) != 0 }

// Report describes the handler in a few lines, for printing.
func (h *Handler) Report() string {
	s := h.Stats()
	var w strings.Builder
	fmt.Fprintf(&w, "fault handler (%s): %d messages, %d remove events, %d pages filled of %d\n",
		h.Kind(), s.Messages, s.Removes, h.FilledPages(), h.b.l.npages)
	for v, vs := range s.Views {
		fmt.Fprintf(&w, "  view %d: missing %d, minor %d, wp %d; copied %d, zeroed %d, continued %d, staged %d pages; eexist %d, eagain %d, wakes %d, fault-around +%d pages\n",
			v, vs.Missing, vs.Minor, vs.WP, vs.Copied, vs.Zeroed, vs.Continued, vs.Staged, vs.EEXIST, vs.EAGAIN, vs.Wakes, vs.Around)
	}
	if s.Violations == 0 {
		fmt.Fprintf(&w, "  invariants: held (each page filled at most once; minor faults only on filled pages)\n")
	} else {
		fmt.Fprintf(&w, "  invariants: %d VIOLATIONS; first: %s\n", s.Violations, s.Violation)
	}
	if s.Errors > 0 {
		fmt.Fprintf(&w, "  source errors: %d; last: %s\n", s.Errors, s.Error)
	}
	if s.Takeovers > 0 {
		fmt.Fprintf(&w, "  handler process died %d time(s); the standby took over\n", s.Takeovers)
	}
	if err := h.Err(); err != nil {
		fmt.Fprintf(&w, "  handler failed: %v\n", err)
	}
	if h.b.l.logcap > 0 {
		e, dropped := h.Log()
		fmt.Fprintf(&w, "  log: %d entries", len(e))
		if dropped > 0 {
			fmt.Fprintf(&w, " (%d more dropped: capacity %d)", dropped, h.b.l.logcap)
		}
		if len(e) > 0 {
			fmt.Fprintf(&w, ", over %v", time.Duration(e[len(e)-1].Time-e[0].Time))
		}
		w.WriteString("\n")
	}
	return w.String()
}

// newHandlerBlock allocates and initialises the block for cfg.
func newHandlerBlock(cfg *Config, fd, page int) (*block, error) {
	npages := cfg.Len / page
	b, err := newBlock(fd, npages, cfg.LogCap, page)
	if err != nil {
		return nil, fmt.Errorf("fault: mapping the counters: %w", err)
	}
	b.init(len(cfg.Views), npages, cfg.LogCap, page)
	for p, present := range cfg.Present {
		if present && p < npages {
			b.setState(p, stPresent)
		}
	}
	return b, nil
}
