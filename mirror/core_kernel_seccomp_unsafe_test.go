package mirror

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/mirrormem/mirrormem/alloc"
	"github.com/mirrormem/mirrormem/internal/mem"
	"golang.org/x/sys/unix"
)

const envSeccomp = "MIRRORMEM_TEST_SECCOMP"

// trapped is the errno the seccomp filters below return for a trapped mremap call: no real
// mremap returns it, and the package does not fall back to another backend on it.
const trapped = unix.ENOTRECOVERABLE

// bpf is one classic BPF instruction with symbolic jump targets ("" = next instruction).
type bpf struct {
	code   uint16
	jt, jf string
	k      uint32
	label  string
}

func assemble(t *testing.T, prog []bpf) []unix.SockFilter {
	t.Helper()
	at := map[string]int{}
	for i, in := range prog {
		if in.label != "" {
			at[in.label] = i
		}
	}
	rel := func(i int, l string) uint8 {
		if l == "" {
			return 0
		}
		j, ok := at[l]
		if !ok || j <= i {
			t.Fatalf("bad jump to %q", l)
		}
		return uint8(j - i - 1)
	}
	out := make([]unix.SockFilter, len(prog))
	for i, in := range prog {
		out[i] = unix.SockFilter{Code: in.code, Jt: rel(i, in.jt), Jf: rel(i, in.jf), K: in.k}
	}
	return out
}

const (
	ldw   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	jeqK  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	jsetK = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
	jeqX  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_X
	tax   = unix.BPF_MISC | unix.BPF_TAX
	retK  = unix.BPF_RET | unix.BPF_K
)

// Offsets in struct seccomp_data (x86-64, little endian): nr, then args[i] at 16+8i.
const (
	offNr        = 0
	offArg0Lo    = 16
	offArg0Hi    = 20
	offArg1Lo    = 24
	offArg1Hi    = 28
	offArg3Lo    = 40
	offArg4Lo    = 48
	offArg4Hi    = 52
	retTrap      = unix.SECCOMP_RET_ERRNO | uint32(trapped)
	retAllow     = unix.SECCOMP_RET_ALLOW
	sysMremapNum = uint32(unix.SYS_MREMAP)
)

// duplicatesOnly selects mremap calls with old_size == 0; what follows it decides.
var duplicatesOnly = []bpf{
	{code: ldw, k: offNr},
	{code: jeqK, k: sysMremapNum, jf: "allow"},
	{code: ldw, k: offArg1Lo},
	{code: jeqK, k: 0, jf: "allow"},
	{code: ldw, k: offArg1Hi},
	{code: jeqK, k: 0, jf: "allow"},
}

// forbiddenDuplicates traps the duplicates this package must never make: without
// MREMAP_MAYMOVE, with MREMAP_DONTUNMAP, or with MREMAP_FIXED onto the source itself.
var forbiddenDuplicates = append(append([]bpf{}, duplicatesOnly...),
	bpf{code: ldw, k: offArg3Lo},
	bpf{code: jsetK, k: unix.MREMAP_MAYMOVE, jf: "trap"},
	bpf{code: jsetK, k: unix.MREMAP_DONTUNMAP, jt: "trap"},
	bpf{code: jsetK, k: unix.MREMAP_FIXED, jf: "allow"},
	bpf{code: ldw, k: offArg4Lo},
	bpf{code: tax},
	bpf{code: ldw, k: offArg0Lo},
	bpf{code: jeqX, jf: "allow"},
	bpf{code: ldw, k: offArg4Hi},
	bpf{code: tax},
	bpf{code: ldw, k: offArg0Hi},
	bpf{code: jeqX, jt: "trap", jf: "allow"},
	bpf{code: retK, k: retTrap, label: "trap"},
	bpf{code: retK, k: retAllow, label: "allow"},
)

// everyDuplicate traps every duplicate.
var everyDuplicate = append(append([]bpf{}, duplicatesOnly...),
	bpf{code: retK, k: retTrap},
	bpf{code: retK, k: retAllow, label: "allow"},
)

// installFilter adds a seccomp filter to every thread of the process; it cannot be removed.
func installFilter(t *testing.T, prog []bpf) {
	t.Helper()
	f := assemble(t, prog)
	fp := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if r, _, e := syscall.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fp))); e != 0 || r != 0 {
		if e == unix.ENOSYS || e == unix.EINVAL {
			t.Skipf("kernel without seccomp filters (CONFIG_SECCOMP_FILTER): %v", e)
		}
		t.Fatalf("seccomp: %d %v", r, e)
	}
}

const privateWarning = "attempted to duplicate a private mapping"

// kmsgCount counts the kernel log records containing s, or returns -1 if the log cannot be
// read.
func kmsgCount(s string) int {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	defer unix.Close(fd)
	buf := make([]byte, 8192)
	n := 0
	for {
		m, err := unix.Read(fd, buf)
		if err == unix.EPIPE { // records overwritten while reading: go on
			continue
		}
		if err != nil || m <= 0 {
			return n
		}
		if strings.Contains(string(buf[:m]), s) {
			n++
		}
	}
}

// The package refuses private memory (ErrNotShared), hugetlb (ErrUnsupported) and ranges past
// their object (ErrPastObject) before calling mremap, so the kernel never logs its warning
// about private duplicates; and it never makes a duplicate the kernel mishandles (without
// MREMAP_MAYMOVE, with MREMAP_DONTUNMAP, MREMAP_FIXED onto the source). A subprocess proves
// it under seccomp filters that make such mremap calls fail with ENOTRECOVERABLE: first the
// forbidden ones while every layout is made, then every duplicate while the refusals run.
// The kernel's side: a private duplicate is EINVAL and logged once per boot.
func TestLibraryNeverMakesForbiddenCalls(t *testing.T) {
	if os.Getenv(envSeccomp) != "" {
		seccompChild(t)
		return
	}
	before := kmsgCount(privateWarning)
	subprocess(t, "TestLibraryNeverMakesForbiddenCalls", []string{envSeccomp + "=1"})
	after := kmsgCount(privateWarning)
	switch {
	case before < 0:
		t.Logf("the kernel log is not readable here: the seccomp filter alone shows mremap was not called")
	case after != before:
		t.Fatalf("the kernel logged %q while the package refused private memory", privateWarning)
	case before > 0:
		t.Logf("the kernel already logged its warning this boot (it does so once): the seccomp filter shows mremap was not called")
	}
	priv := rawMap(t, alloc.PageSize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, -1)
	if p, err := dup(mem.Ptr(priv), len(priv), unix.MREMAP_MAYMOVE, nil); !errors.Is(err, unix.EINVAL) {
		if err == nil {
			mem.Munmap(p, uintptr(len(priv)))
		}
		t.Fatalf("kernel: duplicate of private memory: %v, want EINVAL", err)
	}
	if before >= 0 && kmsgCount(privateWarning) == 0 {
		t.Fatalf("kernel: no %q line in the kernel log after a private duplicate", privateWarning)
	}
}

func seccompChild(t *testing.T) {
	ps := alloc.PageSize()
	n := 2 * ps
	b := rawShared(t, n)
	installFilter(t, forbiddenDuplicates)
	for _, c := range []struct {
		name  string
		flags int
		dst   mem.Pointer
	}{
		{"without MREMAP_MAYMOVE", 0, nil},
		{"with MREMAP_DONTUNMAP", unix.MREMAP_MAYMOVE | unix.MREMAP_DONTUNMAP, nil},
		{"MREMAP_FIXED onto the source", unix.MREMAP_MAYMOVE | unix.MREMAP_FIXED, mem.Ptr(b)},
	} {
		if _, err := dup(mem.Ptr(b), n, c.flags, c.dst); !errors.Is(err, trapped) {
			t.Fatalf("filter does not trap a duplicate %s: %v", c.name, err)
		}
	}
	p, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE, nil)
	if err != nil {
		t.Fatalf("filter traps a plain duplicate: %v", err)
	}
	mem.Munmap(p, uintptr(n))
	for _, mk := range []func() (*alloc.Region, error){
		func() (*alloc.Region, error) { return alloc.Shared(n) },
		func() (*alloc.Region, error) { return alloc.Memfd("seccomp", n) },
		func() (*alloc.Region, error) { return alloc.Shared(n, alloc.WithRoom(2*n)) },
	} {
		for _, opts := range [][]Option{nil, {Adjacent()}, {Views(3)}, {Views(3), Adjacent()}, {WithBackend(BackendDuplicate), Adjacent()}} {
			r, err := mk()
			if err != nil {
				t.Fatal(err)
			}
			pair, err := Mirror(r, opts...)
			if err != nil {
				t.Fatalf("Mirror(%v memory, %d options): %v", r.Kind(), len(opts), err)
			}
			views := make([][]byte, pair.NumViews())
			for i := range views {
				views[i] = pair.View(i)
			}
			seeEachOther(t, views)
			pair.Close()
			r.Close()
		}
	}
	big := rawShared(t, 4*ps)
	pair, err := Of(big[ps:3*ps], Adjacent())
	if err != nil {
		t.Fatalf("Of(sub-range, Adjacent()): %v", err)
	}
	pair.Close()

	fdShort := memfd(t, "short", ps)
	pastObject := mem.Slice(mustDup(t, rawMap(t, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED, fdShort), 2*ps), 2*ps)
	installFilter(t, everyDuplicate)
	if _, err := dup(mem.Ptr(b), n, unix.MREMAP_MAYMOVE, nil); !errors.Is(err, trapped) {
		t.Fatalf("filter does not trap every duplicate: %v", err)
	}
	f, err := os.Create(t.TempDir() + "/private")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(int64(ps))
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"private anonymous", rawMap(t, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, -1), ErrNotShared},
		{"private file", rawMap(t, ps, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE, int(f.Fd())), ErrNotShared},
		{"hugetlb", hugetlbMapping(t), ErrUnsupported},
		{"past its object", pastObject, ErrPastObject},
	} {
		pair, err := Of(c.b)
		if err == nil {
			pair.Close()
			t.Fatalf("Of(%s) succeeded", c.name)
		}
		if !errors.Is(err, c.want) || errors.Is(err, trapped) {
			t.Fatalf("Of(%s): %v\nwant %v without calling mremap", c.name, err, c.want)
		}
	}
}

// mustDup duplicates b into a mapping of n bytes (made before the filter traps every duplicate).
func mustDup(t *testing.T, b []byte, n int) mem.Pointer {
	t.Helper()
	p, err := unix.MremapPtr(mem.Ptr(b), 0, nil, uintptr(n), unix.MREMAP_MAYMOVE)
	if err != nil {
		t.Fatal(err)
	}
	unmapLater(t, p, n)
	return p
}
