package uffd

import "github.com/mirrormem/mirrormem/internal/mem"

// anyShared reports whether a shared mapping overlaps [addr, addr+length). It asks the kernel
// (PROCMAP_QUERY, or /proc/self/maps before 6.11) at registration only, never on the fault
// path; when the areas cannot be read it reports false, leaving UFFDIO_MOVE in the answer.
func anyShared(addr uintptr, length int) bool {
	vmas, err := mem.FindVMAs(addr, addr+uintptr(length))
	if err != nil {
		return false
	}
	for _, v := range vmas {
		if v.Shared() {
			return true
		}
	}
	return false
}
