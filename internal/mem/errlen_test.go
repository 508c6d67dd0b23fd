package mem

import (
	"go/ast"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// maxErrorLen is the longest error text the library may build from constants: an error says
// what was wrong and what to change; the long explanation lives in the doc comment of its
// sentinel or type. Like the system-call boundary, this rule is checked over the whole tree.
const maxErrorLen = 200

// TestErrorStringsShort fails when a non-test file passes errors.New or fmt.Errorf a constant
// text (literals, concatenations and named constants, across the module's packages) longer
// than maxErrorLen.
func TestErrorStringsShort(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	hits := errorStrings(t, root)
	if len(hits) < 100 {
		t.Fatalf("found %d error texts in the module: the walk missed its files", len(hits))
	}
	for _, h := range hits {
		if len(h.text) > maxErrorLen {
			t.Errorf("%s: error text of %d characters (at most %d): %q", h.pos, len(h.text), maxErrorLen, h.text)
		}
	}
}

// TestErrorStringsSeen proves the check follows concatenations and constants of other packages.
func TestErrorStringsSeen(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("x", 150)
	files := map[string]string{
		"go.mod": "module example.com/m\n",
		"a/a.go": "package a\n\nconst Why = \"" + long + "\"\n",
		"b/b.go": `package b

import (
	"errors"
	"fmt"

	"example.com/m/a"
)

const local = "local: "

var (
	e1 = errors.New(local + a.Why)
	e2 = fmt.Errorf("short %d", 1)
)
`,
	}
	for name, src := range files {
		if err := writeFile(filepath.Join(dir, name), src); err != nil {
			t.Fatal(err)
		}
	}
	hits := errorStrings(t, dir)
	if len(hits) != 2 {
		t.Fatalf("found %d error texts, want 2: %+v", len(hits), hits)
	}
	lens := map[int]bool{len(hits[0].text): true, len(hits[1].text): true}
	if !lens[len("local: ")+150] || !lens[len("short %d")] {
		t.Fatalf("texts of lengths %v, want %d and %d", lens, len("local: ")+150, len("short %d"))
	}
}

type errorText struct {
	pos  string
	text string
}

// errPkg is one directory's parsed non-test files, with their constants and imports.
type errPkg struct {
	consts  map[string]ast.Expr
	files   []*ast.File
	imports map[*ast.File]map[string]string
}

// errTree is a module's packages by directory.
type errTree struct {
	root, module string
	fset         *token.FileSet
	pkgs         map[string]*errPkg
}

// errorStrings lists the constant texts given to errors.New and fmt.Errorf in the non-test Go
// files under root (a module).
func errorStrings(t *testing.T, root string) []errorText {
	t.Helper()
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	tr := &errTree{root: root, fset: token.NewFileSet(), pkgs: map[string]*errPkg{}}
	tr.module = strings.Fields(strings.SplitN(string(mod), "\n", 2)[0])[1]
	parseTree(t, tr.fset, root, nil, func(p, _ string, f *ast.File) { tr.add(p, f) })
	var out []errorText
	for dir, pk := range tr.pkgs {
		for _, f := range pk.files {
			ast.Inspect(f, func(n ast.Node) bool {
				if s, ok := tr.errorCall(dir, f, n); ok {
					out = append(out, errorText{tr.fset.Position(n.Pos()).String(), s})
				}
				return true
			})
		}
	}
	return out
}

// add files f, parsed from path p, under its package.
func (tr *errTree) add(p string, f *ast.File) {
	dir := filepath.Dir(p)
	pk := tr.pkgs[dir]
	if pk == nil {
		pk = &errPkg{consts: map[string]ast.Expr{}, imports: map[*ast.File]map[string]string{}}
		tr.pkgs[dir] = pk
	}
	pk.files = append(pk.files, f)
	im := map[string]string{}
	for _, s := range f.Imports {
		path, _ := strconv.Unquote(s.Path.Value)
		name := filepath.Base(path)
		if s.Name != nil {
			name = s.Name.Name
		}
		im[name] = path
	}
	pk.imports[f] = im
	for _, decl := range f.Decls {
		if g, ok := decl.(*ast.GenDecl); ok && g.Tok == token.CONST {
			for _, sp := range g.Specs {
				vs := sp.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						pk.consts[n.Name] = vs.Values[i]
					}
				}
			}
		}
	}
}

// errorCall returns the text of n if it is errors.New or fmt.Errorf with a constant first
// argument.
func (tr *errTree) errorCall(dir string, f *ast.File, n ast.Node) (string, bool) {
	c, ok := n.(*ast.CallExpr)
	if !ok || len(c.Args) == 0 {
		return "", false
	}
	sel, ok := c.Fun.(*ast.SelectorExpr)
	if !ok {
		return "", false
	}
	id, ok := sel.X.(*ast.Ident)
	if !ok {
		return "", false
	}
	if name := id.Name + "." + sel.Sel.Name; name != "errors.New" && name != "fmt.Errorf" {
		return "", false
	}
	return tr.eval(dir, f, c.Args[0])
}

// eval folds a constant string expression of file f in package dir.
func (tr *errTree) eval(dir string, f *ast.File, e ast.Expr) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.ParenExpr:
		return tr.eval(dir, f, e.X)
	case *ast.BinaryExpr:
		a, ok1 := tr.eval(dir, f, e.X)
		b, ok2 := tr.eval(dir, f, e.Y)
		return a + b, e.Op == token.ADD && ok1 && ok2
	case *ast.Ident:
		return tr.constant(dir, e.Name)
	case *ast.SelectorExpr:
		id, ok := e.X.(*ast.Ident)
		if !ok {
			return "", false
		}
		path, ok := tr.pkgs[dir].imports[f][id.Name]
		if !ok || !strings.HasPrefix(path, tr.module) {
			return "", false
		}
		return tr.constant(filepath.Join(tr.root, strings.TrimPrefix(path, tr.module)), e.Sel.Name)
	}
	return "", false
}

// constant folds the constant name of package dir.
func (tr *errTree) constant(dir, name string) (string, bool) {
	pk := tr.pkgs[dir]
	if pk == nil {
		return "", false
	}
	x, ok := pk.consts[name]
	if !ok {
		return "", false
	}
	for _, f := range pk.files {
		if f.Pos() <= x.Pos() && x.End() <= f.End() {
			return tr.eval(dir, f, x)
		}
	}
	return "", false
}
