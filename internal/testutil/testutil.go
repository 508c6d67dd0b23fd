// Package testutil holds what the packages' TestMain functions share: running a helper in a
// re-executed test binary instead of the tests, and starting the runtime poller before the
// first snapshot of open descriptors. Only tests import it.
package testutil

import (
	"fmt"
	"os"
)

// RunHelper runs the helper that the environment variable env names, if env is set, and exits:
// with the helper's result for a func() int, with 3 if a func() returns (those must not), and
// with 2 for a name that is not in helpers. It returns at once if env is not set.
func RunHelper[F func() | func() int](env string, helpers map[string]F) {
	name := os.Getenv(env)
	if name == "" {
		return
	}
	h, ok := helpers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "no test helper %q\n", name)
		os.Exit(2)
	}
	switch h := any(h).(type) {
	case func() int:
		os.Exit(h())
	case func():
		h()
		os.Exit(3)
	}
}

// StartPoller makes the runtime start its poller, whose descriptors (an epoll fd and an
// eventfd) stay for the life of the process, so that a snapshot taken afterwards does not count
// them as leaked.
func StartPoller() {
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
}
