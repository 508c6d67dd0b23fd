package fault

import "golang.org/x/sys/unix"

// mapSource maps a file source that cannot shrink (a memfd sealed with F_SEAL_SHRINK) read-only,
// so that UFFDIO_COPY reads straight from its page cache instead of from a pread copy. Mapping
// reads nothing; nil if the source is not mapped (not a sealed regular file, write-only,
// unaligned offset): pread serves it then.
//
// A file that may shrink is never read through a mapping: a truncation between the check that
// the file still has a window's bytes and the COPY from the mapping would leave the cut page's
// tail as zeros in memory, where pread, one read at one moment, comes up short and the page
// fails as it must. Pages past the mapping (the file grew) are read with pread.
func mapSource(kind SourceKind, fd, aliasFD int, off, srcLen int64, viewLen, page int) []byte {
	if kind != SourceFD || aliasFD >= 0 || off%int64(page) != 0 {
		return nil
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	if !shrinkSealed(fd) {
		return nil
	}
	n := min(st.Size-off, srcLen, int64(viewLen))
	if n <= 0 {
		return nil
	}
	n = (n + int64(page) - 1) / int64(page) * int64(page)
	m, err := unix.Mmap(fd, off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil
	}
	return m
}
