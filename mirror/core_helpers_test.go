package mirror

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem/memtest"
)

// unchanged checks, when the returned function runs, that the test left no fd, mapping,
// goroutine of this module nor child process behind.
func unchanged(t testing.TB) func() {
	t.Helper()
	mem, procs := memtest.Unchanged(t), noneLeft(t)
	return func() {
		t.Helper()
		procs()
		mem()
	}
}

func mapsLine(t testing.TB, addr uintptr) string { t.Helper(); return memtest.MapsLine(t, addr) }

// seeEachOther writes a distinct pattern through every view in turn and checks that every
// other view reads it.
func seeEachOther(t *testing.T, views [][]byte) {
	t.Helper()
	n := len(views[0])
	for w, v := range views {
		for i := 0; i < n; i += 512 {
			v[i] = byte(w*31 + i/512 + 1)
		}
		for r, u := range views {
			for i := 0; i < n; i += 512 {
				if want := byte(w*31 + i/512 + 1); u[i] != want {
					t.Fatalf("write through view %d at %d: view %d reads %d, want %d", w, i, r, u[i], want)
				}
			}
		}
	}
}

// ownGoroutines counts the goroutines running code of this module (the test's own included).
func ownGoroutines() int {
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

// childPids lists this process's child processes (every thread's children).
func childPids() []string {
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

// noneLeft fails t if, once the test is done, goroutines of this module or child processes
// remain that were not there when it started. Goroutines and children that are ending are
// waited for (polled) up to 10 s.
func noneLeft(t testing.TB) func() {
	t.Helper()
	g0, c0 := ownGoroutines(), len(childPids())
	return func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			g, c := ownGoroutines(), childPids()
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

// kernelAtLeast reports whether the running kernel is major.minor or later.
func kernelAtLeast(t testing.TB, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var ma, mi int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q: %v", unix.ByteSliceToString(u.Release[:]), err)
	}
	return ma > major || ma == major && mi >= minor
}
