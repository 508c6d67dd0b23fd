package mem

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// parseTree parses every non-test Go file under root into fset and calls visit with its path,
// its slash-separated path relative to root, and its syntax. It skips testdata, hidden
// directories, and the directories (relative to root) for which skipDir says so. The tree
// checks of this package (the system-call boundary, the length of error texts) walk the
// module with it.
func parseTree(t *testing.T, fset *token.FileSet, root string, skipDir func(rel string) bool, visit func(path, rel string, f *ast.File)) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || skipDir != nil && skipDir(rel)) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		visit(path, rel, f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
