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
}

// featureInitialized is the kernel-internal bit set in ctx->features once UFFDIO_API succeeded
// (UFFD_FEATURE_INITIALIZED, shown by /proc/self/fdinfo since 6.1).
const featureInitialized = 1 << 31

// readFdinfo parses the "API:\t<api>:<features>:<ioctls>" line of a userfaultfd's fdinfo.
func readFdinfo(fd int) (fdinfo, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", fd))
	if err != nil {
		return fdinfo{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "API:")
		if !ok {
			continue
		}
		parts := strings.Split(strings.TrimSpace(rest), ":")
		if len(parts) != 3 {
			return fdinfo{}, false
		}
		v, err := strconv.ParseUint(parts[1], 16, 64)
		if err != nil {
			return fdinfo{}, false
		}
		return fdinfo{apiDone: v&featureInitialized != 0, features: Feature(v) & AllFeatures}, true
	}
	return fdinfo{}, false
}
