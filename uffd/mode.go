package uffd

import "strings"

// Mode selects which faults a registered range reports (UFFDIO_REGISTER_MODE_*). Modes combine with |.
type Mode uint64

const (
	// ModeMissing reports faults on pages that have no backing page yet.
	ModeMissing Mode = 1 << 0
	// ModeWP reports writes to write-protected pages.
	ModeWP Mode = 1 << 1
	// ModeMinor reports faults on pages present in the page cache but not mapped in this view
	// (shmem since 5.14, hugetlbfs since 5.13).
	ModeMinor Mode = 1 << 2
)

// String names the modes, "missing|wp|minor" style.
func (m Mode) String() string {
	if m == 0 {
		return "none"
	}
	var parts []string
	for _, b := range []struct {
		m    Mode
		name string
	}{{ModeMissing, "missing"}, {ModeWP, "wp"}, {ModeMinor, "minor"}} {
		if m&b.m != 0 {
			parts = append(parts, b.name)
			m &^= b.m
		}
	}
	if m != 0 {
		parts = append(parts, "unknown")
	}
	return strings.Join(parts, "|")
}
