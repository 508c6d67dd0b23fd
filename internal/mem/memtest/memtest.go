// Package memtest holds test helpers for the packages that map memory: a strict before/after
// comparison of file descriptors and mappings, and /proc/self/maps look-ups.
package memtest

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

// Unchanged fails t unless the fds and the mappings this package could make or break are
// exactly the same before and after: nothing added, nothing removed.
func Unchanged(t testing.TB) func() {
	t.Helper()
	before, err := leakcheck.Take()
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		after, err := leakcheck.Take()
		if err != nil {
			t.Fatal(err)
		}
		if d := leakcheck.Diff(before, after, false); d != "" {
			t.Errorf("left behind:\n%s", d)
		}
		if d := leakcheck.Diff(after, before, false); d != "" {
			t.Errorf("removed:\n%s", d)
		}
	}
}

// MapsLine returns the /proc/self/maps line of the mapping that contains addr, or "".
func MapsLine(t testing.TB, addr uintptr) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		var lo, hi uintptr
		if _, err := fmt.Sscanf(l, "%x-%x", &lo, &hi); err == nil && lo <= addr && addr < hi {
			return l
		}
	}
	return ""
}
