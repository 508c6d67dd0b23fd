//go:build !cgo

package main

// peerHTTPRow: userfaultfd-go needs cgo, so without it the row says so.
func peerHTTPRow(env *sourcesEnv, name string, n int) row {
	return row{name: name, skip: func() string {
		return errNoCgo.Error() + " (userfaultfd-go needs cgo)"
	}}
}
