package uffd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	helpers["unprivileged"] = helperUnprivileged
	helpers["unprivileged-device"] = helperUnprivilegedDevice
}

// TestUnprivilegedDevice gives an unprivileged user a userfaultfd device node it may open (a
// node of its own, mode 0666, made with mknod): New then gets a userfaultfd that reports
// kernel-mode faults too, with no privilege and vm.unprivileged_userfaultfd = 0.
func TestUnprivilegedDevice(t *testing.T) {
	t.Parallel()
	var st unix.Stat_t
	if err := unix.Stat("/dev/userfaultfd", &st); err != nil {
		t.Skipf("no /dev/userfaultfd (Linux 6.1+): %v", err)
	}
	cmd := unprivilegedCmd(t, "unprivileged-device")
	node := filepath.Join(cmd.Dir, "userfaultfd")
	if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(st.Rdev)); err != nil {
		t.Fatalf("mknod: %v", err)
	}
	if err := os.Chmod(node, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(cmd.Env, "DEVICE_NODE="+node)
	out := runHelper(t, cmd)
	t.Logf("unprivileged child with a device node:\n%s", out)
	for _, want := range []string{"PASS: New via the device", "PASS: kernel-mode fault served"} {
		if !strings.Contains(out, want) {
			t.Errorf("the child did not report %q", want)
		}
	}
}

func helperUnprivilegedDevice() int {
	var c check
	devicePath = os.Getenv("DEVICE_NODE")
	if os.Geteuid() == 0 {
		c.fail("running as root")
		return c.code()
	}
	u, err := New(KernelFaults())
	if err != nil {
		c.fail("New(KernelFaults) with an accessible device: %v", err)
		return c.code()
	}
	defer u.Close()
	if u.IsUserModeOnly() {
		c.fail("the device gave a user-mode-only userfaultfd")
	}
	c.pass("New via the device")
	mem, rd, closeAll, err := registeredPipe(u, pg, "via device")
	if err != nil {
		c.fail("%v", err)
		return c.code()
	}
	defer closeAll()
	res := make(chan error, 1)
	go func() {
		_, err := unix.Read(rd, mem[:10])
		res <- err
	}()
	var msgs [1]Msg
	if n, err := u.ReadMessages(msgs[:]); err != nil || n != 1 || msgs[0].Address() != addr(mem) {
		c.fail("kernel-mode fault: %d %v %v", n, err, &msgs[0])
		return c.code()
	}
	if _, err := u.ZeroPage(addr(mem), pg, 0); err != nil {
		c.fail("zeropage: %v", err)
		return c.code()
	}
	if err := <-res; err != nil || string(mem[:10]) != "via device" {
		c.fail("read(2): %v %q", err, mem[:10])
	} else {
		c.pass("kernel-mode fault served")
	}
	return c.code()
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
	mem, rd, closeAll, err := registeredPipe(u, 2*pg, "kernel-mode fault")
	if err != nil {
		c.fail("%v", err)
		return c.code()
	}
	defer closeAll()
	_, err = unix.Read(rd, mem[:100])

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

// registeredPipe maps n private bytes, registers them on u (MISSING) and opens a pipe that holds
// text: read(2) from rd into the mapping makes the kernel fault on the caller's behalf. The
// closer closes the pipe and unmaps.
func registeredPipe(u *UFFD, n int, text string) (mem []byte, rd int, closeAll func(), err error) {
	mem, err = unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("mmap: %w", err)
	}
	if err := u.Register(addr(mem), n, ModeMissing); err != nil {
		unix.Munmap(mem)
		return nil, 0, nil, fmt.Errorf("register: %w", err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		unix.Munmap(mem)
		return nil, 0, nil, fmt.Errorf("pipe: %w", err)
	}
	unix.Write(p[1], []byte(text))
	return mem, p[0], func() {
		unix.Close(p[0])
		unix.Close(p[1])
		unix.Munmap(mem)
	}, nil
}
