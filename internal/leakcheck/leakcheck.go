// Package leakcheck snapshots a process's file descriptors and memory mappings so tests can prove
// that an operation, successful or refused, left nothing behind.
//
// It is for this module's tests only.
package leakcheck

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Snapshot is the set of open file descriptors (with their targets) and the mappings of the
// calling process at one moment.
type Snapshot struct {
	FDs  map[string]string // fd number -> readlink target
	Maps []string          // lines of /proc/self/maps, sans the volatile [stack]/[heap] sizes
}

// Take reads /proc/self/fd and /proc/self/maps.
func Take() (Snapshot, error) {
	s := Snapshot{FDs: map[string]string{}}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return s, err
	}
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the fd of the ReadDir itself, already closed
		}
		s.FDs[e.Name()] = target
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(maps)), "\n") {
		s.Maps = append(s.Maps, line)
	}
	return s, nil
}

// Diff describes what appeared in after that was not in before: new fds and new mapping lines
// that name a shared or special mapping. The Go runtime grows its own heap and arena mappings
// (anonymous, private) at will, so private anonymous lines are compared only if strict is set.
func Diff(before, after Snapshot, strict bool) string {
	var out []string
	for fd, target := range after.FDs {
		if old, ok := before.FDs[fd]; !ok || old != target {
			out = append(out, fmt.Sprintf("new fd %s -> %s", fd, target))
		}
	}
	old := map[string]bool{}
	for _, l := range before.Maps {
		old[l] = true
	}
	for _, l := range after.Maps {
		if old[l] {
			continue
		}
		if !strict && !interesting(l) {
			continue
		}
		out = append(out, "new mapping "+l)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// interesting reports whether a maps line is one this library could have made: shared
// mappings (s in the permissions), memfd or /dev/zero (shmem) objects, userfaultfd, and
// PROT_NONE reservations.
func interesting(line string) bool {
	f := strings.Fields(line)
	if len(f) < 2 {
		return false
	}
	perms := f[1]
	if strings.HasSuffix(perms, "s") || strings.HasPrefix(perms, "---") {
		return true
	}
	return strings.Contains(line, "memfd:") || strings.Contains(line, "/dev/zero") || strings.Contains(line, "SYSV")
}

// T is the part of testing.TB that Check needs.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
}

// Check takes a snapshot now and returns a function that, called later, fails t if any fd or
// interesting mapping was added in between. Use: defer leakcheck.Check(t)().
func Check(t T) func() {
	t.Helper()
	before, err := Take()
	if err != nil {
		t.Fatalf("leakcheck: %v", err)
	}
	return func() {
		t.Helper()
		after, err := Take()
		if err != nil {
			t.Fatalf("leakcheck: %v", err)
		}
		if d := Diff(before, after, false); d != "" {
			t.Errorf("leaked:\n%s", d)
		}
	}
}
