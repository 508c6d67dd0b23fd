package mem

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

var (
	releaseOnce sync.Once
	release     string
)

// KernelRelease returns the running kernel's release (uname(2)), "" if unknown.
func KernelRelease() string {
	releaseOnce.Do(func() {
		var u unix.Utsname
		if unix.Uname(&u) == nil {
			release = unix.ByteSliceToString(u.Release[:])
		}
	})
	return release
}

// KernelAtLeast reports whether the running kernel's release is major.minor or later.
func KernelAtLeast(major, minor int) bool {
	return ReleaseAtLeast(KernelRelease(), fmt.Sprintf("%d.%d", major, minor))
}

// ReleaseAtLeast reports whether the kernel release rel (such as "6.8.0-51-generic") is at
// least want (such as "6.8"); false if either does not start with major.minor.
func ReleaseAtLeast(rel, want string) bool {
	var a, b, x, y int
	if _, err := fmt.Sscanf(rel, "%d.%d", &a, &b); err != nil {
		return false
	}
	if _, err := fmt.Sscanf(want, "%d.%d", &x, &y); err != nil {
		return false
	}
	return a > x || a == x && b >= y
}
