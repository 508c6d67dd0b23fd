// Package memtest holds test helpers for the packages that map memory: a strict before/after
// comparison of file descriptors and mappings, /proc/self/maps look-ups, resident pages,
// source files, and a poll(2) that survives signals.
package memtest

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// Readable waits up to timeout (for ever if negative) for fd to become readable (POLLIN) and reports whether it did.
// A poll(2) interrupted by a signal (the Go runtime preempts goroutines with SIGURG) is
// resumed with the time left, never taken for a timeout or a failure.
func Readable(t testing.TB, fd int, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		ms := -1 // a negative timeout waits for ever
		if timeout >= 0 {
			ms = int(max(time.Until(deadline), 0).Milliseconds())
		}
		n, err := unix.Poll(pfd, ms)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			t.Fatalf("poll(2) of fd %d: %v", fd, err)
		}
		return n == 1
	}
}
