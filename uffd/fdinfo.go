package uffd

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

type fdinfo struct {
	apiDone  bool
	features Feature
	pending  uint64 // faults not read yet
	total    uint64 // faults read or not, whose thread still waits
}

// featureInitialized is the kernel-internal bit that fs/userfaultfd.c sets in ctx->features once
// UFFDIO_API succeeded (UFFD_FEATURE_INITIALIZED). userfaultfd_show_fdinfo prints ctx->features
// as is, so the bit shows in fdinfo on kernels that have it; older kernels kept a separate state
// field and show only the negotiated features, which is why FromFD does not rely on the bit alone.
const featureInitialized = 1 << 31

// readFdinfo parses the "pending:", "total:" and "API:\t<api>:<features>:<ioctls>" lines of a
// userfaultfd's /proc/self/fdinfo entry.
func readFdinfo(fd int) (fdinfo, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return fdinfo{}, false
	}
	defer f.Close()
	var info fdinfo
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "pending":
			info.pending, _ = strconv.ParseUint(val, 10, 64)
		case "total":
			info.total, _ = strconv.ParseUint(val, 10, 64)
		case "API":
			parts := strings.Split(val, ":")
			if len(parts) != 3 {
				return fdinfo{}, false
			}
			v, err := strconv.ParseUint(parts[1], 16, 64)
			if err != nil {
				return fdinfo{}, false
			}
			info.apiDone = v&featureInitialized != 0
			info.features = Feature(v) &^ featureInitialized
			found = true
		}
	}
	return info, found
}
