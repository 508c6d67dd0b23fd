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
		if d := diffMaps(before, after); d != "" {
			t.Errorf("left behind:\n%s", d)
		}
		if d := diffMaps(after, before); d != "" {
			t.Errorf("removed:\n%s", d)
		}
	}
}

// diffMaps lists the fds and relevant mappings of b that a lacks. Relevant: shared mappings,
// and PROT_NONE reservations except those of the Go runtime, the C library and thread stacks
// (the race detector's threads add them at will), which lie next to a private read-write
// mapping while this package's reservations lie next to shared memory or stand alone.
func diffMaps(a, b leakcheck.Snapshot) string {
	var out []string
	for fd, target := range b.FDs {
		if old, ok := a.FDs[fd]; !ok || old != target {
			out = append(out, fmt.Sprintf("fd %s -> %s", fd, target))
		}
	}
	old := map[string]bool{}
	for _, l := range a.Maps {
		old[l] = true
	}
	for i, l := range b.Maps {
		if !old[l] && relevant(b.Maps, i) {
			out = append(out, "mapping "+l)
		}
	}
	return strings.Join(out, "\n")
}

type vma struct {
	lo, hi uintptr
	perms  string
	rest   string
}

func parse(l string) (v vma, ok bool) {
	f := strings.Fields(l)
	if len(f) < 5 {
		return v, false
	}
	if _, err := fmt.Sscanf(f[0], "%x-%x", &v.lo, &v.hi); err != nil {
		return v, false
	}
	v.perms = f[1]
	v.rest = strings.Join(f[5:], " ")
	return v, true
}

func relevant(maps []string, i int) bool {
	v, ok := parse(maps[i])
	if !ok {
		return false
	}
	if strings.HasSuffix(v.perms, "s") || strings.Contains(v.rest, "memfd:") {
		return true
	}
	if v.perms != "---p" || v.rest != "" {
		return false
	}
	nextToShared, nextToPrivate := false, false
	for _, j := range []int{i - 1, i + 1} {
		if j < 0 || j >= len(maps) {
			continue
		}
		w, ok := parse(maps[j])
		if !ok || (w.hi != v.lo && w.lo != v.hi) {
			continue
		}
		if strings.HasSuffix(w.perms, "s") {
			nextToShared = true
		} else if w.perms != "---p" {
			nextToPrivate = true
		}
	}
	return nextToShared || !nextToPrivate
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
