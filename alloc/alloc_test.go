package alloc

import (
	"errors"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/mirrormem/mirrormem/internal/mem/memtest"
	"golang.org/x/sys/unix"
)

func unchanged(t *testing.T) func() { t.Helper(); return memtest.Unchanged(t) }

func mapsLine(t *testing.T, addr uintptr) string { t.Helper(); return memtest.MapsLine(t, addr) }

func TestShared(t *testing.T) {
	defer unchanged(t)()
	ps := PageSize()
	r, err := Shared(1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != ps || len(r.Bytes()) != ps {
		t.Fatalf("Len %d, len(Bytes) %d, want %d", r.Len(), len(r.Bytes()), ps)
	}
	if r.Addr()%uintptr(ps) != 0 || r.Addr() != uintptr(unsafe.Pointer(&r.Bytes()[0])) {
		t.Fatalf("Addr %#x not page aligned or not Bytes' address", r.Addr())
	}
	if r.Kind() != KindShared || r.Fd() != -1 || r.Room() != 0 {
		t.Fatalf("Kind %v Fd %d Room %d", r.Kind(), r.Fd(), r.Room())
	}
	b := r.Bytes()
	for i := range b {
		if b[i] != 0 {
			t.Fatalf("byte %d is %d, want 0", i, b[i])
		}
		b[i] = byte(i)
	}
	if l := mapsLine(t, r.Addr()); !strings.Contains(l, "rw-s") || !strings.Contains(l, "/dev/zero") {
		t.Fatalf("maps line %q: want a rw-s /dev/zero (shmem) mapping", l)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if r.Bytes() != nil || r.Addr() != 0 {
		t.Fatal("Bytes/Addr after Close should be nil/0")
	}
}

func TestBadSizes(t *testing.T) {
	ps := PageSize()
	for _, tc := range []struct {
		name string
		size int
		opts []Option
		want error
		errs string
	}{
		{"zero", 0, nil, ErrSize, "(0 bytes)"},
		{"negative", -5, nil, ErrSize, "(-5 bytes)"},
		{"overflow", math.MaxInt - ps + 2, nil, ErrSize, "overflows"},
		{"over address space", 1 << 62, nil, unix.ENOMEM, "4611686018427387904"},
		{"room overflow", ps, []Option{WithRoom(math.MaxInt - ps)}, ErrSize, "overflows"},
		{"negative room", ps, []Option{WithRoom(-1)}, ErrSize, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer unchanged(t)()
			for _, mk := range []func() (*Region, error){
				func() (*Region, error) { return Shared(tc.size, tc.opts...) },
				func() (*Region, error) { return Memfd("bad", tc.size, tc.opts...) },
			} {
				r, err := mk()
				if err == nil {
					r.Close()
					t.Fatalf("size %d: no error", tc.size)
				}
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.errs) {
					t.Fatalf("size %d: %v; want %v mentioning %q", tc.size, err, tc.want, tc.errs)
				}
			}
		})
	}
}

func TestMemfd(t *testing.T) {
	defer unchanged(t)()
	r, err := Memfd("alloc-test", 3*PageSize()-1)
	if err != nil {
		t.Fatal(err)
	}
	fd := r.Fd()
	if fd < 0 || r.Kind() != KindMemfd || r.Len() != 3*PageSize() {
		t.Fatalf("Fd %d Kind %v Len %d", fd, r.Kind(), r.Len())
	}
	if l := mapsLine(t, r.Addr()); !strings.Contains(l, "/memfd:alloc-test") || !strings.Contains(l, "rw-s") {
		t.Fatalf("maps line %q", l)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size != int64(r.Len()) {
		t.Fatalf("fstat: size %d, %v", st.Size, err)
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Fatalf("fd flags %#x %v: want FD_CLOEXEC", fl, err)
	}
	r.Bytes()[5] = 42
	buf := make([]byte, 1)
	if _, err := unix.Pread(fd, buf, 5); err != nil || buf[0] != 42 {
		t.Fatalf("pread through the fd: %v %v, want 42", buf, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if r.Fd() != -1 {
		t.Fatal("Fd after Close should be -1")
	}
}

func TestFromFD(t *testing.T) {
	defer unchanged(t)()
	owner, err := Memfd("shared-with", 2*PageSize())
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	r, err := FromFD(owner.Fd(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Fd() == owner.Fd() || r.Len() != owner.Len() || r.Kind() != KindMemfd {
		t.Fatalf("Fd %d (owner %d) Len %d Kind %v: want a duplicate of the whole memfd", r.Fd(), owner.Fd(), r.Len(), r.Kind())
	}
	owner.Bytes()[100] = 7
	r.Bytes()[200] = 9
	if r.Bytes()[100] != 7 || owner.Bytes()[200] != 9 {
		t.Fatal("FromFD region and the memfd's own mapping do not share pages")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// The caller's fd is untouched by the region's Close.
	if _, err := unix.FcntlInt(uintptr(owner.Fd()), unix.F_GETFD, 0); err != nil {
		t.Fatalf("caller's fd closed by FromFD's region: %v", err)
	}

	r, err = FromFD(owner.Fd(), owner.Len()+1)
	if !errors.Is(err, ErrSize) || !strings.Contains(err.Error(), "SIGBUS") {
		t.Fatalf("FromFD larger than the object: %v, want ErrSize mentioning SIGBUS", err)
	}
	p, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer w.Close()
	if r, err = FromFD(int(p.Fd()), PageSize()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("FromFD(pipe): %v, want ErrUnsupported", err)
	}
	ro, err := os.Open("/proc/self/fd/" + strconv.Itoa(owner.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if r, err = FromFD(int(ro.Fd()), 0); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "not open for reading and writing") {
		t.Fatalf("FromFD(read-only fd): %v, want ErrUnsupported", err)
	}
	if r, err = FromFD(-1, PageSize()); !errors.Is(err, unix.EBADF) {
		t.Fatalf("FromFD(-1): %v, want EBADF", err)
	}
}

func TestPopulate(t *testing.T) {
	defer unchanged(t)()
	const pages = 64
	plain, err := Shared(pages * PageSize())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if n := memtest.Resident(t, plain.Bytes()); n != 0 {
		t.Fatalf("%d pages resident without Populate, want 0", n)
	}
	for _, mk := range []func() (*Region, error){
		func() (*Region, error) { return Shared(pages*PageSize(), Populate()) },
		func() (*Region, error) { return Memfd("populated", pages*PageSize(), Populate()) },
	} {
		r, err := mk()
		if errors.Is(err, ErrUnsupported) {
			t.Skipf("kernel older than 5.14 lacks MADV_POPULATE_WRITE: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		if n := memtest.Resident(t, r.Bytes()); n != pages {
			t.Fatalf("%d of %d pages resident after Populate", n, pages)
		}
		r.Close()
	}
}

func TestHugePages(t *testing.T) {
	defer unchanged(t)()
	data, err := os.ReadFile(shmemEnabled)
	setting := ""
	if err == nil {
		setting = selected(data)
	}
	r, err := Shared(4<<20, HugePages())
	switch setting {
	case "always", "within_size", "advise", "force":
		if err != nil {
			t.Fatalf("shmem_enabled is %q but HugePages failed: %v", setting, err)
		}
		r.Close()
	default:
		if err == nil {
			r.Close()
			t.Fatalf("shmem_enabled is %q but HugePages succeeded", setting)
		}
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "shmem_enabled") {
			t.Fatalf("HugePages with shmem_enabled %q: %v, want ErrUnsupported naming the setting", setting, err)
		}
	}
}

func TestSelected(t *testing.T) {
	for in, want := range map[string]string{
		"always within_size advise [never] deny force\n": "never",
		"[always] within_size advise never deny force":   "always",
		"advise\n": "advise",
	} {
		if got := selected([]byte(in)); got != want {
			t.Errorf("selected(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRoomAndLend(t *testing.T) {
	defer unchanged(t)()
	ps := PageSize()
	r, err := Shared(2*ps, WithRoom(3*ps-100))
	if err != nil {
		t.Fatal(err)
	}
	if r.Room() != 3*ps {
		t.Fatalf("Room %d, want %d", r.Room(), 3*ps)
	}
	end := r.Addr() + uintptr(r.Len())
	if l := mapsLine(t, end); !strings.Contains(l, "---p") {
		t.Fatalf("room at %#x: %q, want a PROT_NONE reservation", end, l)
	}
	if _, err := r.Lend(4 * ps); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("Lend beyond the room: %v, want ErrNoRoom", err)
	}
	l, err := r.Lend(2 * ps)
	if err != nil {
		t.Fatal(err)
	}
	if got := uintptr(unsafe.Pointer(&l.Bytes()[0])); got != end || len(l.Bytes()) != 2*ps {
		t.Fatalf("lease at %#x+%d, want %#x+%d", got, len(l.Bytes()), end, 2*ps)
	}
	if _, err := r.Lend(ps); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("second Lend: %v, want ErrNoRoom", err)
	}
	// Map something over the lease, as package mirror does; Release must restore PROT_NONE.
	if _, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&l.Bytes()[0]), uintptr(ps), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if line := mapsLine(t, end); !strings.Contains(line, "---p") {
		t.Fatalf("after Release: %q, want PROT_NONE", line)
	}
	// The room can be lent again, and the region's Close leaves an outstanding lease alone.
	l, err = r.Lend(ps)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if line := mapsLine(t, end); line == "" {
		t.Fatal("region Close unmapped the lent room")
	}
	if line := mapsLine(t, end+uintptr(ps)); line != "" && ours(line) {
		t.Fatalf("unlent room still mapped after Close: %q", line)
	}
	if _, err := r.Lend(ps); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lend after Close: %v, want ErrClosed", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if line := mapsLine(t, end); line != "" && ours(line) {
		t.Fatalf("lease released after the region closed but still mapped: %q", line)
	}
}

func TestManyCycles(t *testing.T) {
	defer unchanged(t)()
	for i := 0; i < 10000; i++ {
		r, err := Shared(64<<10, WithRoom(64<<10))
		if err != nil {
			t.Fatal(err)
		}
		l, err := r.Lend(64 << 10)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Release(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCloseWith(t *testing.T) {
	defer unchanged(t)()
	ps := PageSize()
	r, err := Shared(ps, WithRoom(2*ps))
	if err != nil {
		t.Fatal(err)
	}
	other, err := Shared(ps, WithRoom(ps))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l, err := r.Lend(ps)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.CloseWith(l); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("CloseWith a lease of another region: %v", err)
	}
	if _, err := unix.MmapPtr(-1, 0, unsafe.Pointer(&l.Bytes()[0]), uintptr(ps), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_SHARED|unix.MAP_ANONYMOUS|unix.MAP_FIXED); err != nil {
		t.Fatal(err)
	}
	base := r.Addr()
	if err := r.CloseWith(l); err != nil {
		t.Fatal(err)
	}
	for _, a := range []uintptr{base, base + uintptr(ps), base + uintptr(2*ps)} {
		// Another thread may map something of its own there as soon as the range is free (a
		// thread stack, a malloc arena: private, accessible); what this package maps is
		// shared memory or an inaccessible reservation.
		if line := mapsLine(t, a); line != "" && ours(line) {
			t.Fatalf("%#x still mapped after CloseWith: %q", a, line)
		}
	}
	if err := errors.Join(l.Release(), r.Close(), r.CloseWith(l)); err != nil {
		t.Fatalf("after CloseWith, Release/Close/CloseWith should return nil: %v", err)
	}
}

// ours reports whether a /proc/self/maps line could be a mapping this package made: shared
// memory, or a PROT_NONE reservation.
func ours(line string) bool {
	f := strings.Fields(line)
	return len(f) > 1 && (strings.HasSuffix(f[1], "s") || f[1] == "---p")
}
