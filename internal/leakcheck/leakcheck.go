// Package leakcheck snapshots a process's file descriptors and memory mappings so tests can prove
// that an operation, successful or refused, left nothing behind.
//
// It is for this module's tests only.
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// Snapshot is the set of open file descriptors (with their targets) and the mappings of the
// calling process at one moment.
type Snapshot struct {
	FDs  map[string]string // fd number -> readlink target
	Maps []string          // lines of /proc/self/maps
}

// pollerOnce starts the runtime's poller before the first snapshot: the runtime opens its
// descriptors (an epoll fd and an eventfd) on first use, a timer or a pipe, and keeps them for
// the life of the process, so a test that happens to be the first user would be blamed for
// them (go test's -test.timeout timer usually starts it; a test binary run without it does not).
var pollerOnce sync.Once

// Take reads /proc/self/fd and /proc/self/maps.
func Take() (Snapshot, error) {
	pollerOnce.Do(func() {
		if r, w, err := os.Pipe(); err == nil {
			r.Close()
			w.Close()
		}
	})
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

// Diff describes what after has that before lacks: new or changed fds, and new mappings of
// the kinds this module makes (see Relevant). The Go runtime, the C library and the race
// detector's threads grow their own private mappings at will, so those are compared only if
// strict is set.
func Diff(before, after Snapshot, strict bool) string {
	var out []string
	for fd, target := range after.FDs {
		if old, ok := before.FDs[fd]; !ok || old != target {
			out = append(out, fmt.Sprintf("fd %s -> %s", fd, target))
		}
	}
	old := map[string]bool{}
	for _, l := range before.Maps {
		old[l] = true
	}
	for i, l := range after.Maps {
		if !old[l] && (strict || Relevant(after.Maps, i)) {
			out = append(out, "mapping "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// Relevant reports whether line i of maps is a mapping this module could have made: a shared
// mapping, a memfd, or a PROT_NONE reservation. PROT_NONE guard pages of the Go runtime, the C
// library's malloc arenas and thread stacks lie next to a private read-write mapping, while
// this module's reservations lie next to shared memory or stand alone; only the latter count.
func Relevant(maps []string, i int) bool {
	v, ok := mem.ParseMapsLine(maps[i])
	if !ok {
		return false
	}
	if v.Shared() || strings.Contains(v.Path, "memfd:") || strings.Contains(v.Path, "/dev/zero") {
		return true
	}
	if v.Perms != "---p" || v.Path != "" {
		return false
	}
	nextToShared, nextToPrivate := false, false
	for _, j := range []int{i - 1, i + 1} {
		if j < 0 || j >= len(maps) {
			continue
		}
		w, ok := mem.ParseMapsLine(maps[j])
		if !ok || (w.End != v.Start && w.Start != v.End) {
			continue
		}
		if w.Shared() {
			nextToShared = true
		} else if w.Perms != "---p" {
			nextToPrivate = true
		}
	}
	return nextToShared || !nextToPrivate
}

// CheckShared is Check for packages that never reserve address space: only new fds and new
// shared or memfd mappings count, and every anonymous PROT_NONE area (Go heap arenas, thread
// stack guards, C library malloc arenas, which appear as threads start) is ignored.
func CheckShared(t T) func() {
	t.Helper()
	return check(t, func(l string) bool {
		return strings.Contains(l, " ---p ") && strings.HasSuffix(strings.TrimSpace(l), " 00:00 0")
	})
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
	return check(t, func(string) bool { return false })
}

// check takes a snapshot now and returns a function that, called later, fails t with every
// line of the difference that ignore does not accept.
func check(t T, ignore func(line string) bool) func() {
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
		var bad []string
		for _, l := range strings.Split(Diff(before, after, false), "\n") {
			if l != "" && !ignore(l) {
				bad = append(bad, l)
			}
		}
		if len(bad) > 0 {
			t.Errorf("leaked:\n%s", strings.Join(bad, "\n"))
		}
	}
}

// ModuleGoroutines counts the goroutines running code of this module (the caller's included),
// leaving out the GC-forcing loop of internal/gcstress, which tests stop themselves.
func ModuleGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	c := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/mirrormem/mirrormem/") && !strings.Contains(g, "internal/gcstress") {
			c++
		}
	}
	return c
}

// ChildPids lists the child processes of every thread of this process.
func ChildPids() []string {
	var out []string
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		if err == nil {
			out = append(out, strings.Fields(string(b))...)
		}
	}
	return out
}

// NoneLeft notes the module's goroutines and the child processes now and returns a function
// that, called when the test is done, fails t if more remain. Goroutines and children that are
// ending are waited for, polling, up to 10 s.
func NoneLeft(t T) func() {
	t.Helper()
	g0, c0 := ModuleGoroutines(), len(ChildPids())
	return func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			g, c := ModuleGoroutines(), ChildPids()
			if g <= g0 && len(c) <= c0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("left behind: %d goroutines of this module (had %d), child processes %v (had %d)", g, g0, c, c0)
				return
			}
			time.Sleep(5 * time.Millisecond) // polling for exits, bounded by the deadline
		}
	}
}
