package uffd

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
)

// anyShared reports whether a shared mapping overlaps [addr, addr+length), from /proc/self/maps.
// It is read at registration only, never on the fault path.
func anyShared(addr uintptr, length int) bool {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return false
	}
	defer f.Close()
	lo, hi := uint64(addr), uint64(addr)+uint64(length)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		start, end, perms, ok := parseMapsLine(sc.Bytes())
		if !ok || end <= lo {
			continue
		}
		if start >= hi {
			break // the lines are sorted by address
		}
		if perms[3] == 's' {
			return true
		}
	}
	return false
}

// parseMapsLine reads "start-end perms ..." of one /proc/self/maps line.
func parseMapsLine(line []byte) (start, end uint64, perms []byte, ok bool) {
	rng, rest, ok1 := bytes.Cut(line, []byte{' '})
	perms, _, ok2 := bytes.Cut(rest, []byte{' '})
	a, b, ok3 := bytes.Cut(rng, []byte{'-'})
	if !ok1 || !ok2 || !ok3 || len(perms) < 4 {
		return 0, 0, nil, false
	}
	s, err1 := strconv.ParseUint(string(a), 16, 64)
	e, err2 := strconv.ParseUint(string(b), 16, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, nil, false
	}
	return s, e, perms, true
}
