//go:build !cgo

package main

// peerRestoreRow: userfaultfd-go needs cgo, so without it the row says so.
func peerRestoreRow(srv *restoreServer, size, wsBytes int, wseed uint64) row {
	return row{name: rowRestorePeer, skip: func() string {
		return errNoCgo.Error() + " (userfaultfd-go needs cgo)"
	}}
}
