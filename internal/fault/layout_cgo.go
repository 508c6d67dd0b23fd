//go:build cgo

package fault

/*
#include "native.h"
*/
import "C"

// Compile-time checks that layout.go and block.h describe the same block: each line below
// compiles only if the two constants are equal (an array of length zero from an array whose
// length is their difference).
var (
	_ [0]int = [C.H_WORDS - hWords]int{}
	_ [0]int = [C.H_LOGNEXT - hLogNext]int{}
	_ [0]int = [C.H_VIOLATIONS - hViolations]int{}
	_ [0]int = [C.H_ERRORS - hErrors]int{}
	_ [0]int = [C.H_MSGS - hMsgs]int{}
	_ [0]int = [C.H_REMOVES - hRemoves]int{}
	_ [0]int = [C.H_CLOSING - hClosing]int{}
	_ [0]int = [C.H_HEARTBEAT - hHeartbeat]int{}
	_ [0]int = [C.H_TAKEOVERS - hTakeovers]int{}
	_ [0]int = [C.H_TRACKED - hTracked]int{}
	_ [0]int = [C.H_INFLIGHT - hInflight]int{}
	_ [0]int = [C.H_INFLIGHT_PAGES - hInflightPages]int{}
	_ [0]int = [C.H_ERR_TEXT - hErrText]int{}
	_ [0]int = [C.H_ERR_TEXT + errTextLen/8 - hErrText - errTextLen/8]int{}
	_ [0]int = [C.H_TID - hTID]int{}
	_ [0]int = [C.H_SPIN_HITS - hSpinHits]int{}
	_ [0]int = [C.H_SPIN_MISSES - hSpinMisses]int{}

	_ [0]int = [C.C_WORDS - cWords]int{}
	_ [0]int = [C.C_MISSING - cMissing]int{}
	_ [0]int = [C.C_MINOR - cMinor]int{}
	_ [0]int = [C.C_WP - cWP]int{}
	_ [0]int = [C.C_COPIED - cCopied]int{}
	_ [0]int = [C.C_ZEROED - cZeroed]int{}
	_ [0]int = [C.C_CONTINUED - cContinued]int{}
	_ [0]int = [C.C_EEXIST - cEEXIST]int{}
	_ [0]int = [C.C_EAGAIN - cEAGAIN]int{}
	_ [0]int = [C.C_WAKES - cWakes]int{}
	_ [0]int = [C.C_STAGED - cStaged]int{}
	_ [0]int = [C.C_BYTES - cBytes]int{}
	_ [0]int = [C.C_DIRTY - cDirty]int{}
	_ [0]int = [C.C_AROUND - cAround]int{}
	_ [0]int = [C.C_RESCUED - cRescued]int{}

	_ [0]int = [C.ST_EMPTY - stEmpty]int{}
	_ [0]int = [C.ST_FILLED - stFilled]int{}
	_ [0]int = [C.ST_PRESENT - stPresent]int{}
	_ [0]int = [C.ST_RESET - stReset]int{}

	_ [0]int = [C.K_MISSING - int(KindMissing)]int{}
	_ [0]int = [C.K_MINOR - int(KindMinor)]int{}
	_ [0]int = [C.K_WP - int(KindWP)]int{}
	_ [0]int = [C.K_REMOVE - int(KindRemove)]int{}
	_ [0]int = [C.R_COPIED - int(ResultCopied)]int{}
	_ [0]int = [C.R_ZEROED - int(ResultZeroed)]int{}
	_ [0]int = [C.R_STAGED - int(ResultStaged)]int{}
	_ [0]int = [C.R_CONTINUED - int(ResultContinued)]int{}
	_ [0]int = [C.R_EEXIST - int(ResultExists)]int{}
	_ [0]int = [C.R_ERROR - int(ResultError)]int{}
	_ [0]int = [C.R_UNPROTECTED - int(ResultUnprotected)]int{}
	_ [0]int = [C.R_RESET - int(ResultReset)]int{}
	_ [0]int = [C.V_TWICE - violTwice]int{}
	_ [0]int = [C.V_MINOR_UNFILLED - violMinorUnfilled]int{}

	_ [0]int = [C.MM_MAX_VIEWS - MaxViews]int{}
	_ [0]int = [C.MM_LOG_SIZE - logEntrySize]int{}
	_ [0]int = [C.MM_LOG_OFF_TIME - logTime]int{}
	_ [0]int = [C.MM_LOG_OFF_OFF - logOffset]int{}
	_ [0]int = [C.MM_LOG_OFF_TID - logThread]int{}
	_ [0]int = [C.MM_LOG_OFF_VIEW - logView]int{}
	_ [0]int = [C.MM_LOG_OFF_KIND - logKind]int{}
	_ [0]int = [C.MM_LOG_OFF_RESULT - logResult]int{}
	_ [0]int = [C.MM_LOG_OFF_PAGES - logPages]int{}
	_ [0]int = [C.MM_STATE_OFF_C - (hWords*8 + MaxViews*cWords*8)]int{}

	_ [0]int = [C.MM_SRC_ZERO - int(SourceZero)]int{}
	_ [0]int = [C.MM_SRC_FD - int(SourceFD)]int{}
	_ [0]int = [C.MM_SRC_MEM - int(SourceMem)]int{}
)
