// Package memtest holds test helpers for the packages that map memory: a strict before/after
// comparison of file descriptors and mappings, /proc/self/maps look-ups, resident pages and
// source files.
package memtest

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
	"github.com/mirrormem/mirrormem/internal/mem"
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

// Resident returns how many pages of b are resident, by mincore(2); b starts on a page boundary.
func Resident(t testing.TB, b []byte) int {
	t.Helper()
	ps := os.Getpagesize()
	vec := make([]byte, (len(b)+ps-1)/ps)
	if err := mem.Mincore(mem.Ptr(b), uintptr(len(b)), vec); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TempFile writes data into a new file in t's temporary directory and returns it open; it is
// closed when the test ends.
func TempFile(t testing.TB, data []byte) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "source")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	return f
}
