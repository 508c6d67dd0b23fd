//go:build !cgo

// Package cref is the C reference of the fault benchmarks; it needs cgo, and is empty without.
package cref
