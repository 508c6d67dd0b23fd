package uffd

import (
	"errors"
	"fmt"
	"github.com/mirrormem/mirrormem/internal/mem"
	"math/bits"
	"strings"
)

// Feature is a set of UFFD_FEATURE_* bits negotiated with UFFDIO_API.
type Feature uint64

// Every feature the kernel offers up to Linux 6.18, with the version that brought it.
const (
	FeaturePagefaultFlagWP  Feature = 1 << 0  // 4.3 (with write-protect mode, 5.7)
	FeatureEventFork        Feature = 1 << 1  // 4.11
	FeatureEventRemap       Feature = 1 << 2  // 4.11
	FeatureEventRemove      Feature = 1 << 3  // 4.11
	FeatureMissingHugetlbfs Feature = 1 << 4  // 4.11
	FeatureMissingShmem     Feature = 1 << 5  // 4.11
	FeatureEventUnmap       Feature = 1 << 6  // 4.11
	FeatureSigbus           Feature = 1 << 7  // 4.14
	FeatureThreadID         Feature = 1 << 8  // 4.14
	FeatureMinorHugetlbfs   Feature = 1 << 9  // 5.13
	FeatureMinorShmem       Feature = 1 << 10 // 5.14
	FeatureExactAddress     Feature = 1 << 11 // 5.18
	FeatureWPHugetlbfsShmem Feature = 1 << 12 // 5.19
	FeatureWPUnpopulated    Feature = 1 << 13 // 6.4
	FeaturePoison           Feature = 1 << 14 // 6.6
	FeatureWPAsync          Feature = 1 << 15 // 6.7
	FeatureMove             Feature = 1 << 16 // 6.8
)

var featureInfo = [...]struct {
	name  string
	since string
}{
	{"PAGEFAULT_FLAG_WP", "4.3"},
	{"EVENT_FORK", "4.11"},
	{"EVENT_REMAP", "4.11"},
	{"EVENT_REMOVE", "4.11"},
	{"MISSING_HUGETLBFS", "4.11"},
	{"MISSING_SHMEM", "4.11"},
	{"EVENT_UNMAP", "4.11"},
	{"SIGBUS", "4.14"},
	{"THREAD_ID", "4.14"},
	{"MINOR_HUGETLBFS", "5.13"},
	{"MINOR_SHMEM", "5.14"},
	{"EXACT_ADDRESS", "5.18"},
	{"WP_HUGETLBFS_SHMEM", "5.19"},
	{"WP_UNPOPULATED", "6.4"},
	{"POISON", "6.6"},
	{"WP_ASYNC", "6.7"},
	{"MOVE", "6.8"},
}

// AllFeatures is every feature this package knows.
const AllFeatures Feature = 1<<len(featureInfo) - 1

// String names the features, "UFFD_FEATURE_" left off, separated by |.
func (f Feature) String() string {
	if f == 0 {
		return "none"
	}
	var parts []string
	for f != 0 {
		i := bits.TrailingZeros64(uint64(f))
		f &^= 1 << i
		if i < len(featureInfo) {
			parts = append(parts, featureInfo[i].name)
		} else {
			parts = append(parts, fmt.Sprintf("bit%d", i))
		}
	}
	return strings.Join(parts, "|")
}

// Since returns the first Linux version offering the lowest feature in f ("" if unknown).
func (f Feature) Since() string {
	if f == 0 {
		return ""
	}
	i := bits.TrailingZeros64(uint64(f))
	if i < len(featureInfo) {
		return featureInfo[i].since
	}
	return ""
}

// ErrNotSupported matches (with errors.Is) every error saying the running kernel lacks a feature.
var ErrNotSupported = errors.New("not supported by this kernel")

// FeatureError says which features the kernel did not offer. It matches ErrNotSupported.
type FeatureError struct {
	// Missing holds the features asked for that the running kernel does not offer.
	Missing Feature
	// Kernel is the running kernel's release (uname -r), for the message.
	Kernel string
}

func newFeatureError(missing Feature) *FeatureError {
	return &FeatureError{Missing: missing, Kernel: mem.KernelRelease()}
}

// Error names each missing feature and the Linux version that brought it.
func (e *FeatureError) Error() string {
	var parts []string
	for f := e.Missing; f != 0; f &= f - 1 {
		one := f & -f
		if since := one.Since(); since != "" {
			parts = append(parts, fmt.Sprintf("UFFD_FEATURE_%s (Linux %s+)", one.String(), since))
		} else {
			parts = append(parts, fmt.Sprintf("feature %s (unknown to this package)", one.String()))
		}
	}
	kernel := "kernel"
	if e.Kernel != "" {
		kernel = "kernel " + e.Kernel
	}
	return "userfaultfd: " + kernel + " does not offer " + strings.Join(parts, ", ")
}

// Is makes errors.Is(err, ErrNotSupported) true.
func (e *FeatureError) Is(target error) bool { return target == ErrNotSupported }

// Ioctls is the set of UFFDIO_* ioctls (bit n is the ioctl with number n) that the kernel offers
// on a userfaultfd or on a registered range.
type Ioctls uint64

// The ioctls, as bits of Ioctls.
const (
	IoctlRegister     Ioctls = 1 << nrRegister
	IoctlUnregister   Ioctls = 1 << nrUnregister
	IoctlWake         Ioctls = 1 << nrWake
	IoctlCopy         Ioctls = 1 << nrCopy
	IoctlZeropage     Ioctls = 1 << nrZeropage
	IoctlMove         Ioctls = 1 << nrMove
	IoctlWriteprotect Ioctls = 1 << nrWriteprotect
	IoctlContinue     Ioctls = 1 << nrContinue
	IoctlPoison       Ioctls = 1 << nrPoison
	IoctlAPI          Ioctls = 1 << nrAPI
)

var ioctlNames = map[Ioctls]string{
	IoctlRegister: "REGISTER", IoctlUnregister: "UNREGISTER", IoctlWake: "WAKE", IoctlCopy: "COPY",
	IoctlZeropage: "ZEROPAGE", IoctlMove: "MOVE", IoctlWriteprotect: "WRITEPROTECT",
	IoctlContinue: "CONTINUE", IoctlPoison: "POISON", IoctlAPI: "API",
}

// String names the ioctls, "UFFDIO_" left off, separated by |.
func (s Ioctls) String() string {
	if s == 0 {
		return "none"
	}
	var parts []string
	for f := s; f != 0; f &= f - 1 {
		one := f & -f
		if n, ok := ioctlNames[one]; ok {
			parts = append(parts, n)
		} else {
			parts = append(parts, fmt.Sprintf("bit%d", bits.TrailingZeros64(uint64(one))))
		}
	}
	return strings.Join(parts, "|")
}
