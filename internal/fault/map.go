package fault

import "golang.org/x/sys/unix"

// mapSource maps a regular file (or memfd) source read-only, so that UFFDIO_COPY reads straight
// from its page cache instead of from a pread copy. Mapping reads nothing; nil if the source
// cannot be mapped (not a regular file, write-only, unaligned offset): pread serves it then.
// Pages past the mapping (the file grew) are read with pread; a file that shrinks makes
// UFFDIO_COPY fail with EFAULT there, and the handler falls back to pread.
func mapSource(kind SourceKind, fd, aliasFD int, off, srcLen int64, viewLen, page int) []byte {
	if kind != SourceFD || aliasFD >= 0 || off%int64(page) != 0 {
		return nil
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
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
