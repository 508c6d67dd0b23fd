//go:build !cgo

package main

// Without cgo there is no C reference and no peer (userfaultfd-go needs cgo): their rows say so.

const cgoEnabled = false

func cRingDup(n, iters int) (int64, error)   { return 0, errNoCgo }
func cRingMemfd(n, iters int) (int64, error) { return 0, errNoCgo }

type cFaultResult struct {
	ns             int64
	faults, eexist uint64
}

func cFaultRun(fc faultCase, seed uint64, src []byte) (cFaultResult, error) {
	return cFaultResult{}, errNoCgo
}

func peerRow(fc faultCase, _ int, _ []byte) row {
	return row{name: rowPeer, skip: func() string { return errNoCgo.Error() }}
}
