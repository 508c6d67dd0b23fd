package fault

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/mem"
)

// sourceKinds are file sources of 4 pages, with whether each is sealed against shrinking.
func sourceKinds(t *testing.T, page int) []struct {
	name   string
	fd     int
	sealed bool
} {
	memfd := func(t *testing.T, seals int) int {
		fd, err := mem.MemfdCreate("map-source", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		b := bytes.Repeat([]byte{0xa5}, 4*page)
		if _, err := unix.Pwrite(fd, b, 0); err != nil {
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
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(int64(4 * page)); err != nil {
		t.Fatal(err)
	}
	return []struct {
		name   string
		fd     int
		sealed bool
	}{
		{"regular file", int(f.Fd()), false},
		{"memfd", memfd(t, 0), false},
		{"memfd sealed against growing", memfd(t, unix.F_SEAL_GROW), false},
		{"memfd sealed against shrinking", memfd(t, unix.F_SEAL_SHRINK), true},
		{"memfd sealed against shrinking and writes", memfd(t, unix.F_SEAL_SHRINK|unix.F_SEAL_WRITE), true},
	}
}

// Only a file that cannot shrink is read through a mapping: for any other, a truncation
// between the size check and the COPY from the mapping would serve the cut page's lost bytes
// as zeros (pread, one read at one moment, comes up short instead).
func TestMapSourceOnlySealedFiles(t *testing.T) {
	page := os.Getpagesize()
	for _, c := range sourceKinds(t, page) {
		m := mapSource(SourceFD, c.fd, -1, 0, int64(4*page), 4*page, page)
		if (m != nil) != c.sealed {
			t.Errorf("%s: mapped %v, want %v", c.name, m != nil, c.sealed)
		}
		if m != nil {
			unix.Munmap(m)
		}
	}
}

// A file source sealed against shrinking skips the size check after each read (a system call
// per fault): that is sound only because such a file refuses every truncation below its size
// (and a seal, once added, cannot be taken off: fcntl(2) has no call for it). Reads of it still return its bytes, then zeros past the
// length it had when serving began.
func TestSealedSourceCannotShrink(t *testing.T) {
	page := os.Getpagesize()
	for _, c := range sourceKinds(t, page) {
		if got := shrinkSealed(c.fd); got != c.sealed {
			t.Errorf("%s: shrinkSealed %v, want %v", c.name, got, c.sealed)
		}
		// The seal is what makes the difference: a file without it shrinks.
		err := unix.Ftruncate(c.fd, int64(3*page))
		if c.sealed && !errors.Is(err, unix.EPERM) || !c.sealed && err != nil {
			t.Errorf("%s: ftruncate to three pages: %v, want EPERM only if sealed against shrinking", c.name, err)
		}
		if !c.sealed {
			continue
		}
		s := &fdSource{fd: c.fd, len: int64(3 * page), sealed: true}
		p := make([]byte, 2*page)
		if n, err := s.ReadAt(p, int64(2*page)); err != nil || n != len(p) {
			t.Fatalf("%s: ReadAt = %d, %v", c.name, n, err)
		}
		if !bytes.Equal(p[:page], bytes.Repeat([]byte{0xa5}, page)) || !bytes.Equal(p[page:], make([]byte, page)) {
			t.Errorf("%s: want the file's third page, then zeros past the source's length", c.name)
		}
	}
}
