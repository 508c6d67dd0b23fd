//go:build !cgo

package fault

import (
	"errors"
	"time"
)

// NativeAvailable reports whether this build has the native (C thread) handler.
const NativeAvailable = false

// ErrNoNative is returned by StartNative in builds without cgo.
var ErrNoNative = errors.New("fault: the native (C thread) handler needs cgo; this program was built with CGO_ENABLED=0: use the handler process (StartProcess)")

// StartNative is not available without cgo.
func StartNative(cfg Config) (*Handler, error) { return nil, ErrNoNative }

// Watchdog needs cgo.
type Watchdog struct{}

// StartWatchdog is not available without cgo.
func StartWatchdog(timeout time.Duration, msg string, h *Handler) (*Watchdog, error) {
	return nil, ErrNoNative
}

// Stop does nothing.
func (w *Watchdog) Stop() {}
