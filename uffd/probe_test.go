package uffd

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// TestProbe fails (never skips) when the kernel is new enough for a feature or ioctl and the
// probe says it is missing.
func TestProbe(t *testing.T) {
	r, err := Probe()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%v", r)
	if r.Kernel == "" {
		t.Fatal("no kernel release")
	}
	for i, fi := range featureInfo {
		f := Feature(1) << i
		if mem.ReleaseAtLeast(r.Kernel, fi.since) && r.Features&f == 0 {
			t.Errorf("kernel %s >= %s but the probe says UFFD_FEATURE_%s is missing", r.Kernel, fi.since, fi.name)
		}
		if err := r.Require(f); (err == nil) != (r.Features&f != 0) {
			t.Errorf("Require(%v) = %v with features %v", f, err, r.Features)
		}
	}
	if r.Ioctls != IoctlAPI|IoctlRegister|IoctlUnregister {
		t.Errorf("userfaultfd ioctls %v, want API|REGISTER|UNREGISTER", r.Ioctls)
	}
	wantAnon := IoctlWake | IoctlCopy | IoctlZeropage
	wantShmem := IoctlWake | IoctlCopy | IoctlZeropage
	if mem.ReleaseAtLeast(r.Kernel, "5.7") {
		wantAnon |= IoctlWriteprotect
	}
	if mem.ReleaseAtLeast(r.Kernel, "5.19") {
		wantShmem |= IoctlWriteprotect
	}
	if mem.ReleaseAtLeast(r.Kernel, "5.14") {
		wantShmem |= IoctlContinue
	}
	if mem.ReleaseAtLeast(r.Kernel, "6.6") {
		wantAnon |= IoctlPoison
		wantShmem |= IoctlPoison
	}
	if mem.ReleaseAtLeast(r.Kernel, "6.8") {
		wantAnon |= IoctlMove
	}
	if missing := wantAnon &^ r.AnonIoctls; missing != 0 {
		t.Errorf("private anonymous memory lacks %v (has %v)", missing, r.AnonIoctls)
	}
	if missing := wantShmem &^ r.ShmemIoctls; missing != 0 {
		t.Errorf("shmem lacks %v (has %v)", missing, r.ShmemIoctls)
	}
	if r.ShmemIoctls&IoctlMove != 0 {
		t.Errorf("shmem ioctls %v still offer MOVE, which only works on private memory", r.ShmemIoctls)
	}
	if r.AnonIoctls&IoctlContinue != 0 || r.AnonModes&ModeMinor != 0 {
		t.Errorf("private anonymous memory took minor mode: %v %v", r.AnonModes, r.AnonIoctls)
	}
	if mem.ReleaseAtLeast(r.Kernel, "5.19") && r.ShmemModes != ModeMissing|ModeWP|ModeMinor {
		t.Errorf("shmem modes %v, want missing|wp|minor", r.ShmemModes)
	}
	if mem.ReleaseAtLeast(r.Kernel, "6.1") && !r.Device {
		t.Errorf("kernel %s has no /dev/userfaultfd", r.Kernel)
	}
	if err := r.RequireIoctls(IoctlMove, true); !errors.Is(err, ErrNotSupported) ||
		!strings.Contains(err.Error(), "UFFDIO_MOVE (Linux 6.8+)") || !strings.Contains(err.Error(), "shmem") {
		t.Errorf("RequireIoctls(MOVE, shmem) = %v", err)
	}
	// Names: every known bit has one.
	for _, s := range []string{r.Features.String(), r.AnonIoctls.String(), r.ShmemModes.String()} {
		if strings.Contains(s, "bit") || strings.Contains(s, "unknown") {
			t.Errorf("unnamed bits in %q", s)
		}
	}
	if avail, err := Available(); err != nil || avail != r.Features {
		t.Errorf("Available() = %v, %v; Probe says %v", avail, err, r.Features)
	}
}

func TestFeatureErrorNamesFeatureAndVersion(t *testing.T) {
	t.Parallel()
	err := error(&FeatureError{Missing: FeatureMove | FeatureMinorShmem, Kernel: "5.10.0"})
	if !errors.Is(err, ErrNotSupported) {
		t.Fatal("FeatureError does not match ErrNotSupported")
	}
	want := "userfaultfd: kernel 5.10.0 does not offer UFFD_FEATURE_MINOR_SHMEM (Linux 5.14+), UFFD_FEATURE_MOVE (Linux 6.8+)"
	if err.Error() != want {
		t.Fatalf("got %q\nwant %q", err, want)
	}
}

// TestNewUnknownFeature asks the real kernel for a feature bit it does not know: the handshake
// is refused with EINVAL and New turns that into a FeatureError naming the bit.
func TestNewUnknownFeature(t *testing.T) {
	t.Parallel()
	const unknown = Feature(1) << 40
	_, err := New(WithFeatures(FeatureThreadID | unknown))
	var fe *FeatureError
	if !errors.As(err, &fe) || !errors.Is(err, ErrNotSupported) {
		t.Fatalf("New(unknown feature) = %v, want a FeatureError", err)
	}
	if fe.Missing != unknown || !strings.Contains(err.Error(), "bit40") || fe.Kernel == "" {
		t.Fatalf("error %q names %v", err, fe.Missing)
	}
}

func TestNewNegotiatesEveryFeature(t *testing.T) {
	t.Parallel()
	avail, err := Available()
	if err != nil {
		t.Fatal(err)
	}
	want := avail &^ FeatureEventFork
	if unix.Geteuid() == 0 {
		want = avail
	}
	u := newT(t, WithFeatures(want))
	if u.Features()&want != want {
		t.Fatalf("negotiated %v, asked %v", u.Features(), want)
	}
	info, ok := readFdinfo(u.Fd())
	if !ok || !info.apiDone || info.features&want != want {
		t.Fatalf("fdinfo %+v %v", info, ok)
	}
}
