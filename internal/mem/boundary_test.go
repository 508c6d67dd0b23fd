package mem

import (
	"go/ast"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The memory and userfaultfd system calls of the library live in this package and in uffd.
// internal/fault (the fault handlers, which map their own byte-slice blocks and sources) and
// internal/guard (the guard thread's stack and futex) keep theirs. bench measures raw calls
// against the library's on purpose, and the examples stand for programs of their own.
var boundaryAllowed = []string{"internal/mem", "uffd", "internal/fault", "internal/guard", "bench", "examples"}

// forbiddenUnix are the functions of x/sys/unix that make a memory or userfaultfd system call.
var forbiddenUnix = map[string]bool{
	"Mmap": true, "MmapPtr": true, "Munmap": true, "MunmapPtr": true, "Mremap": true, "MremapPtr": true,
	"Madvise": true, "Mprotect": true, "Mincore": true, "Mlock": true, "Munlock": true, "Msync": true,
	"MemfdCreate": true,
}

// forbiddenSyscalls are the system call numbers that may not be passed to unix.Syscall and friends.
var forbiddenSyscalls = map[string]bool{
	"SYS_MMAP": true, "SYS_MUNMAP": true, "SYS_MREMAP": true, "SYS_MADVISE": true, "SYS_MPROTECT": true,
	"SYS_MINCORE": true, "SYS_MEMFD_CREATE": true, "SYS_USERFAULTFD": true, "SYS_PROCESS_MADVISE": true,
	"SYS_MLOCK": true, "SYS_MSYNC": true, "SYS_PKEY_MPROTECT": true,
}

// TestSyscallBoundary fails when a non-test file outside the allowed packages makes a memory or
// userfaultfd system call itself instead of through this package or uffd.
func TestSyscallBoundary(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range syscallBoundaryViolations(t, root) {
		t.Errorf("%s: call it through internal/mem or uffd", v)
	}
}

// TestSyscallBoundaryCatches proves the check sees a violation.
func TestSyscallBoundaryCatches(t *testing.T) {
	dir := t.TempDir()
	src := `package p

import (
	"golang.org/x/sys/unix"
	u "golang.org/x/sys/unix"
)

func f(b []byte) {
	unix.Madvise(b, unix.MADV_DONTNEED)
	u.Syscall(u.SYS_MINCORE, 0, 0, 0)
	unix.RawSyscall6(unix.SYS_MREMAP, 0, 0, 0, 0, 0, 0)
	unix.Syscall(unix.SYS_GETPID, 0, 0, 0) // not a memory call
	unix.Close(0)
}
`
	if err := writeFile(filepath.Join(dir, "p", "p.go"), src); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(filepath.Join(dir, "p", "p_test.go"), src); err != nil {
		t.Fatal(err)
	}
	got := syscallBoundaryViolations(t, dir)
	if len(got) != 3 {
		t.Fatalf("found %d violations, want 3 (p.go only): %q", len(got), got)
	}
}

func syscallBoundaryViolations(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	fset := token.NewFileSet()
	parseTree(t, fset, root, func(rel string) bool { return slices.Contains(boundaryAllowed, rel) },
		func(_, rel string, f *ast.File) { out = append(out, fileViolations(fset, f, rel)...) })
	return out
}

// fileViolations lists the forbidden calls in f, by the name f gives x/sys/unix.
func fileViolations(fset *token.FileSet, f *ast.File, rel string) []string {
	names := map[string]bool{}
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == "golang.org/x/sys/unix" {
			name := "unix"
			if imp.Name != nil {
				name = imp.Name.Name
			}
			names[name] = true
		}
	}
	if len(names) == 0 {
		return nil
	}
	unixSel := func(e ast.Expr) (string, bool) {
		sel, ok := e.(*ast.SelectorExpr)
		if !ok {
			return "", false
		}
		id, ok := sel.X.(*ast.Ident)
		if !ok || !names[id.Name] {
			return "", false
		}
		return sel.Sel.Name, true
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		fn, ok := unixSel(call.Fun)
		if !ok {
			return true
		}
		pos := fset.Position(call.Pos())
		where := rel + ":" + strconv.Itoa(pos.Line)
		switch {
		case forbiddenUnix[fn]:
			out = append(out, where+": unix."+fn)
		case strings.HasPrefix(fn, "Syscall") || strings.HasPrefix(fn, "RawSyscall"):
			if len(call.Args) > 0 {
				if nr, ok := unixSel(call.Args[0]); ok && forbiddenSyscalls[nr] {
					out = append(out, where+": unix."+fn+"(unix."+nr+")")
				}
			}
		}
		return true
	})
	return out
}

func writeFile(path, src string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(src), 0o644)
}
