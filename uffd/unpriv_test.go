package uffd

import (
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	helpers["unprivileged"] = helperUnprivileged
}

// TestUnprivileged runs helperUnprivileged as uid/gid 65534 (no capabilities) and checks that
// every one of its checks ran and passed.
func TestUnprivileged(t *testing.T) {
	t.Parallel()
	sysctl, err := os.ReadFile("/proc/sys/vm/unprivileged_userfaultfd")
	if err != nil {
		t.Fatalf("reading vm.unprivileged_userfaultfd: %v", err)
	}
	devOthers := "absent"
	if st, err := os.Stat("/dev/userfaultfd"); err == nil {
		devOthers = "closed"
		if st.Mode().Perm()&0o006 == 0o006 {
			devOthers = "open"
		}
	}
	cmd := unprivilegedCmd(t, "unprivileged", "SYSCTL="+strings.TrimSpace(string(sysctl)), "DEVICE="+devOthers)
	out := runHelper(t, cmd)
	t.Logf("unprivileged child:\n%s", out)
	for _, want := range []string{"PASS: uid", "PASS: New", "PASS: KernelFaults", "PASS: ViaDevice",
		"PASS: EVENT_FORK", "PASS: kernel-mode fault", "PASS: user-mode fault", "PASS: Probe"} {
		if !strings.Contains(out, want) {
			t.Errorf("the child did not report %q", want)
		}
	}
}

func helperUnprivileged() int {
	var c check
	if os.Getuid() != 65534 || os.Geteuid() != 65534 {
		c.fail("running as uid %d euid %d, want 65534", os.Getuid(), os.Geteuid())
		return c.code()
	}
	c.pass("uid 65534")
	sysctlZero := os.Getenv("SYSCTL") == "0"
	device := os.Getenv("DEVICE")

	// New finds a way in by itself: userfaultfd(2) with UFFD_USER_MODE_ONLY.
	u, err := New()
	switch {
	case err != nil:
		c.fail("New as an unprivileged user: %v", err)
	case sysctlZero && !u.IsUserModeOnly():
		c.fail("New gave a userfaultfd that is not user-mode only with vm.unprivileged_userfaultfd = 0")
	default:
		c.pass("New (user-mode only: " + boolStr(u.IsUserModeOnly()) + ")")
	}
	if u == nil {
		return c.code()
	}
	defer u.Close()

	// Asking for kernel-mode faults is refused with a message that says what to change.
	if _, err := New(KernelFaults(), ViaSyscall()); sysctlZero {
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if !errors.Is(err, unix.EPERM) || !strings.Contains(msg, "vm.unprivileged_userfaultfd") ||
			!strings.Contains(msg, "CAP_SYS_PTRACE") || !strings.Contains(msg, "/dev/userfaultfd") {
			c.fail("New(KernelFaults, ViaSyscall) = %v; want EPERM saying what to change", err)
		} else {
			c.pass("KernelFaults refused: " + msg)
		}
	} else {
		c.pass("KernelFaults (sysctl allows it)")
	}

	// The device, mode 0600 root, refuses this user.
	_, err = New(ViaDevice())
	switch device {
	case "closed":
		if !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "/dev/userfaultfd") ||
			!strings.Contains(err.Error(), "read-write access") {
			c.fail("New(ViaDevice) = %v; want a permission error naming the device and the fix", err)
		} else {
			c.pass("ViaDevice refused: " + err.Error())
		}
	case "absent":
		if !errors.Is(err, ErrNotSupported) {
			c.fail("New(ViaDevice) without the device = %v, want ErrNotSupported", err)
		} else {
			c.pass("ViaDevice: no device")
		}
	default:
		if err != nil {
			c.fail("New(ViaDevice) with the device open to all = %v", err)
		} else {
			c.pass("ViaDevice allowed")
		}
	}
	if sysctlZero && device == "closed" {
		_, err := New(KernelFaults())
		if err == nil || !strings.Contains(err.Error(), "userfaultfd(2)") && !strings.Contains(err.Error(), "userfaultfd:") ||
			!strings.Contains(err.Error(), "/dev/userfaultfd") {
			c.fail("New(KernelFaults) trying both ways = %v; want both refusals", err)
		}
	}

	// EVENT_FORK needs CAP_SYS_PTRACE.
	if _, err := New(WithFeatures(FeatureEventFork)); !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_SYS_PTRACE") {
		c.fail("New(EVENT_FORK) unprivileged = %v; want EPERM naming CAP_SYS_PTRACE", err)
	} else {
		c.pass("EVENT_FORK refused: " + err.Error())
	}

	// A fault the kernel takes on our behalf (read(2) into registered memory) fails with
	// EFAULT under UFFD_USER_MODE_ONLY instead of reaching the handler.
	mem, err := unix.Mmap(-1, 0, 2*pg, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		c.fail("mmap: %v", err)
		return c.code()
	}
	defer unix.Munmap(mem)
	if err := u.Register(addr(mem), len(mem), ModeMissing); err != nil {
		c.fail("Register: %v", err)
		return c.code()
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		c.fail("pipe: %v", err)
		return c.code()
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	unix.Write(p[1], []byte("kernel-mode fault"))
	_, err = unix.Read(p[0], mem[:100])
	if u.IsUserModeOnly() {
		if err != unix.EFAULT {
			c.fail("read(2) into registered memory under UFFD_USER_MODE_ONLY: %v, want EFAULT", err)
		} else {
			c.pass("kernel-mode fault: read(2) failed with EFAULT")
		}
	} else {
		c.pass("kernel-mode fault (not user-mode only)")
	}

	// A fault in user mode, from a plain Go loop, is reported and served.
	done := sumAsync(mem[pg:])
	var msgs [4]Msg
	n, err := u.ReadMessages(msgs[:])
	if err != nil || n < 1 || msgs[0].Event() != EventPagefault || msgs[0].Address()&^uintptr(pg-1) != addr(mem)+uintptr(pg) {
		c.fail("user-mode fault: %d messages, %v: %v", n, err, &msgs[0])
	} else if _, err := u.CopyAll(addr(mem)+uintptr(pg), page(3), 0); err != nil {
		c.fail("COPY: %v", err)
	} else if s := <-done; s != 3 {
		c.fail("served page reads %d", s)
	} else {
		c.pass("user-mode fault served")
	}

	r, err := Probe()
	if err != nil || (sysctlZero && !r.UserModeOnly) || r.Features&FeatureMissingShmem == 0 {
		c.fail("Probe unprivileged: %v %v", r, err)
	} else {
		c.pass("Probe (user-mode only)")
	}
	return c.code()
}

func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
