package fault

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// Only a file that cannot shrink is read through a mapping: for any other, a truncation
// between the size check and the COPY from the mapping would serve the cut page's lost bytes
// as zeros (pread, one read at one moment, comes up short instead).
func TestMapSourceOnlySealedFiles(t *testing.T) {
	page := os.Getpagesize()
	memfd := func(t *testing.T, seals int) int {
		fd, err := mem.MemfdCreate("map-source", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, int64(4*page)); err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		return fd
	}
	f, err := os.CreateTemp(t.TempDir(), "source")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(4 * page)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		fd     int
		mapped bool
	}{
		{"regular file", int(f.Fd()), false},
		{"memfd", memfd(t, 0), false},
		{"memfd sealed against growing", memfd(t, unix.F_SEAL_GROW), false},
		{"memfd sealed against shrinking", memfd(t, unix.F_SEAL_SHRINK), true},
	} {
		m := mapSource(SourceFD, c.fd, -1, 0, int64(4*page), 4*page, page)
		if (m != nil) != c.mapped {
			t.Errorf("%s: mapped %v, want %v", c.name, m != nil, c.mapped)
		}
		if m != nil {
			unix.Munmap(m)
		}
	}
}
