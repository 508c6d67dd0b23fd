package mem

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// VMA is one line of /proc/self/maps: a virtual memory area of this process.
type VMA struct {
	Start, End uintptr
	Perms      string // for example "rw-s": read, write, execute, s(hared) or p(rivate)
	Offset     uint64 // offset into the mapped object
	Dev        string
	Inode      uint64
	Path       string // "" for anonymous private memory, "/dev/zero (deleted)" for MAP_SHARED|MAP_ANONYMOUS, "/memfd:name (deleted)", ...
	PageSize   int    // the area's page size where the kernel reports it (PROCMAP_QUERY), else 0
}

// Shared reports whether the area is a shared mapping (MAP_SHARED).
func (v VMA) Shared() bool { return len(v.Perms) == 4 && v.Perms[3] == 's' }

// Prot returns the area's protection as PROT_* bits.
func (v VMA) Prot() int {
	p := unix.PROT_NONE
	if len(v.Perms) >= 3 {
		if v.Perms[0] == 'r' {
			p |= unix.PROT_READ
		}
		if v.Perms[1] == 'w' {
			p |= unix.PROT_WRITE
		}
		if v.Perms[2] == 'x' {
			p |= unix.PROT_EXEC
		}
	}
	return p
}

// HugeTLBPath reports whether the area is hugetlb memory as far as the look-up can tell: its
// page size is larger than the base page (known with PROCMAP_QUERY, 6.11+), or its path is
// that of anonymous MAP_HUGETLB memory. (A hugetlb memfd is also recognised from its file
// system, by the caller.)
func (v VMA) HugeTLBPath() bool {
	return v.PageSize > pageSize || strings.HasPrefix(v.Path, "/anon_hugepage")
}

// ParseMapsLine parses one line of /proc/<pid>/maps.
func ParseMapsLine(line string) (VMA, bool) {
	var v VMA
	f := strings.Fields(line)
	if len(f) < 5 {
		return v, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return v, false
	}
	s, err1 := strconv.ParseUint(lo, 16, 64)
	e, err2 := strconv.ParseUint(hi, 16, 64)
	off, err3 := strconv.ParseUint(f[2], 16, 64)
	ino, err4 := strconv.ParseUint(f[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || len(f[1]) != 4 {
		return v, false
	}
	v = VMA{Start: uintptr(s), End: uintptr(e), Perms: f[1], Offset: off, Dev: f[3], Inode: ino}
	if len(f) > 5 {
		// The path is the rest of the line and may contain spaces.
		i := strings.Index(line, f[5])
		v.Path = line[i:]
	}
	return v, true
}

// FindVMAs returns the areas of this process that overlap [start, end), in address order. It
// asks the kernel with the PROCMAP_QUERY ioctl (6.11+) and falls back to parsing the text of
// /proc/self/maps on older kernels.
func FindVMAs(start, end uintptr) ([]VMA, error) {
	if out, ok, err := queryVMAs(start, end); ok || err != nil {
		return out, err
	}
	return readVMAs(start, end)
}

// readVMAs is FindVMAs by parsing the text of /proc/self/maps.
func readVMAs(start, end uintptr) ([]VMA, error) {
	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return nil, err
	}
	var out []VMA
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		v, ok := ParseMapsLine(sc.Text())
		if !ok {
			continue
		}
		if v.End <= start {
			continue
		}
		if v.Start >= end {
			break
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

// OpenMapFile opens the object mapped by v through /proc/self/map_files (the kernel requires
// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE for this). flags are open(2) flags; O_CLOEXEC is added.
func OpenMapFile(v VMA, flags int) (int, error) {
	path := fmt.Sprintf("/proc/self/map_files/%x-%x", v.Start, v.End)
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}
