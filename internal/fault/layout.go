package fault

// The shared block: counters, page states, dirty bits and the verification log of one handler,
// written by the handler (a C thread, a handler process through a shared memfd, or the engine
// in this process) and read by Go with atomic loads. block.h is its definition for C; in cgo
// builds layout_cgo.go fails to compile if the two differ.

// MaxViews is the most views one handler serves.
const MaxViews = 8

// Header words.
const (
	hMagic = iota
	hNViews
	hNPages
	hPage
	hLogCap
	hLogNext
	hViolations
	hViolCode
	hViolOff
	hErrors
	hErrno
	hErrOff
	hMsgs
	hRemoves
	hClosing
	hHeartbeat
	hLoops
	hTakeovers
	hTracked       // bit v: view v is under dirty tracking
	hInflight      // handler process: first page of the fault being resolved, plus 1 (0: none)
	hInflightPages // handler process: how many pages from hInflight
	hErrText       // 8 words: the last source error's text, for sources that are Go code
	hWords         = 32
)

// Header words after the error text.
const (
	hTID        = 29 // the serving thread's id (native) or the serving process's id (handler process)
	hSpinHits   = 30 // waits ended by a message found while spinning
	hSpinMisses = 31 // spins that ended without a message (the handler then blocked)
)

// Per-view counter words.
const (
	cMissing = iota
	cMinor
	cWP
	cCopied
	cZeroed
	cContinued
	cEEXIST
	cEAGAIN
	cWakes
	cStaged
	cBytes
	cDirty
	cAround
	cRescued // pages the in-process server's watchdog mapped while Go code could not run
	cWords   = 16
)

// Page states.
const (
	stEmpty   = 0 // never filled
	stFilled  = 1 // filled by the handler
	stPresent = 2 // already in the page cache when serving started
	stReset   = 3 // dropped by MADV_DONTNEED/MADV_REMOVE: may be filled again
)

const magic = 0x6d6972726f726d31 // "mirrorm1"

// A log entry: its size and the byte offsets of its fields.
const (
	logEntrySize = 32
	logTime      = 0
	logOffset    = 8
	logThread    = 16
	logView      = 20
	logKind      = 21
	logResult    = 22
	logPages     = 24
)

type layout struct {
	npages, logcap         int
	counters, state, dirty int
	log, size              int
}

func round64(n int) int { return (n + 63) &^ 63 }

func makeLayout(npages, logcap, pageSize int) layout {
	var l layout
	l.npages, l.logcap = npages, logcap
	l.counters = hWords * 8
	l.state = l.counters + MaxViews*cWords*8
	l.dirty = l.state + round64(npages)
	l.log = l.dirty + round64(MaxViews*npages)
	l.size = l.log + logcap*logEntrySize
	l.size = (l.size + pageSize - 1) / pageSize * pageSize
	return l
}
