package uffd

import "fmt"

// RangeError reports a range the caller passed that cannot be used.
type RangeError struct {
	Op   string
	Addr uintptr
	Len  int
	Why  string
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("%s [%#x, +%d): %s", e.Op, e.Addr, e.Len, e.Why)
}
