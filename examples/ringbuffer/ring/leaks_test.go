package ring

import (
	"strings"
	"testing"

	"github.com/mirrormem/mirrormem/internal/leakcheck"
)

// checkLeaks is leakcheck.Check without the private anonymous PROT_NONE mappings that the Go
// runtime makes by itself while a test runs: heap arena reservations when the heap grows and,
// with the race detector on, a guard page and a malloc arena for each new thread (futex sleeps
// make the runtime start threads). None of them is the ring's: a leaked ring shows as shared
// mappings (rw-s) and memfd descriptors, which still count, like every other new fd.
func checkLeaks(t *testing.T) func() {
	before, err := leakcheck.Take()
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		after, err := leakcheck.Take()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(leakcheck.Diff(before, after, false), "\n") {
			if l != "" && !strings.HasSuffix(strings.TrimSpace(l), "---p 00000000 00:00 0") {
				t.Errorf("leaked: %s", l)
			}
		}
	}
}
