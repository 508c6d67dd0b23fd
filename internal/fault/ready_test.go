package fault

import (
	"strings"
	"testing"
	"time"

	_ "github.com/mirrormem/mirrormem/internal/fault/blockinit"
	"github.com/mirrormem/mirrormem/uffd"
)

// A handler process that never starts serving (an init function blocking in the re-executed
// program) makes StartProcess fail after a bounded wait, naming the cause, with the processes
// killed and nothing left behind.
func TestStartProcessReadyTimeout(t *testing.T) {
	const n = 4 * pg
	p := newTestPair(t, n, uffd.ModeMissing, 0)
	defer checkLeaks(t)()
	noneLeft(t)
	t.Setenv("FAULT_TEST_BLOCK_INIT", "1")
	old := readyTimeout
	readyTimeout = 300 * time.Millisecond
	defer func() { readyTimeout = old }()
	done := make(chan error, 1)
	go func() {
		h, err := StartProcess(zeroConfig(p, n), ProcessOptions{})
		if err == nil {
			h.Stop()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "did not serve within") {
			t.Fatalf("StartProcess with a blocked handler process: %v, want a timeout naming the cause", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("StartProcess waited 30 s for a handler process that never started serving")
	}
}
