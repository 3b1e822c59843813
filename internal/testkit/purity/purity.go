// Package purity checks, from a test, that a package's sources stay a pure
// core: they import exactly what is allowed (an allowed import no source
// uses is reported too, so the lists do not rot), start no goroutines, and
// neither read the clock nor wait on it (time.Now, Since, Until, Sleep,
// After, Tick, NewTimer, NewTicker, AfterFunc), whatever name package time
// is imported under, nor call a function listed as I/O (DefaultCalls:
// time.LoadLocation, which reads zoneinfo files; a package adds its own,
// e.g. a parser that resolves time zones). It imports only the standard
// library.
package purity

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// ClockFuncs are the functions of package time a pure core must not use:
// they read the clock or wait on it. Time comes in as an argument.
var ClockFuncs = []string{"Now", "Since", "Until", "Sleep", "After", "Tick", "NewTimer", "NewTicker", "AfterFunc"}

// Call is a function a pure core must not call, by its package's import
// path and name, and why (in the problem reported).
type Call struct {
	Path, Name, Why string
}

// DefaultCalls are the calls no pure core makes: I/O behind a pure-looking
// signature.
var DefaultCalls = []Call{
	{Path: "time", Name: "LoadLocation", Why: "reads the machine's zoneinfo files: take the *time.Location (parsed by the caller) as an argument"},
}

// Check inspects the non-test Go files in the current directory (a test's
// working directory is its package) and reports every problem Inspect
// finds as a test error. minFiles guards against checking nothing.
// forbid adds calls to DefaultCalls.
func Check(t testing.TB, allowed map[string]bool, minFiles int, forbid ...Call) {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(name string) bool { return strings.HasSuffix(name, "_test.go") })
	if len(files) < minFiles {
		t.Fatalf("found %d files, expected the package's %d or more sources", len(files), minFiles)
	}
	problems, err := Inspect(files, allowed, forbid...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("purity: %s", p)
	}
}

// Inspect parses files and returns one line per problem: an import not in
// allowed, an allowed import none of the files uses, a go statement, a use
// of one of ClockFuncs (through the name package time is imported under in
// that file), a call of DefaultCalls or forbid (through the name its
// package is imported under), or a dot import of package time (which would
// hide them).
func Inspect(files []string, allowed map[string]bool, forbid ...Call) ([]string, error) {
	calls := append(append([]Call(nil), DefaultCalls...), forbid...)
	var problems []string
	used := map[string]bool{}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("purity: %w", err)
		}
		timeName := ""
		names := map[string]string{} // the name each import is used under -> its path
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return nil, fmt.Errorf("purity: %s: import %s: %w", fset.Position(imp.Pos()), imp.Path.Value, err)
			}
			used[p] = true
			if imp.Name != nil {
				names[imp.Name.Name] = p
			} else {
				names[p[strings.LastIndex(p, "/")+1:]] = p
			}
			if !allowed[p] {
				problems = append(problems, fmt.Sprintf("%s: imports %s, which is not allowed", fset.Position(imp.Pos()), p))
			}
			if p != "time" {
				continue
			}
			timeName = "time"
			if imp.Name != nil {
				timeName = imp.Name.Name
			}
			if timeName == "." {
				problems = append(problems, fmt.Sprintf("%s: dot import of time: its clock reads could not be told apart", fset.Position(imp.Pos())))
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.GoStmt:
				problems = append(problems, fmt.Sprintf("%s: go statement: a pure core starts no goroutines", fset.Position(n.Pos())))
			case *ast.SelectorExpr:
				// Without type information an identifier named like the
				// import counts as the package even where a local shadows
				// it; a pure core has no reason to shadow it.
				id, ok := n.X.(*ast.Ident)
				if ok && timeName != "" && timeName != "_" && id.Name == timeName && slices.Contains(ClockFuncs, n.Sel.Name) {
					problems = append(problems, fmt.Sprintf("%s: %s.%s (package time): take the time as an argument", fset.Position(n.Pos()), id.Name, n.Sel.Name))
				}
				if !ok {
					break
				}
				if p, imported := names[id.Name]; imported && id.Name != "_" {
					for _, c := range calls {
						if c.Path == p && c.Name == n.Sel.Name {
							problems = append(problems, fmt.Sprintf("%s: %s.%s (package %s) %s", fset.Position(n.Pos()), id.Name, n.Sel.Name, p, c.Why))
						}
					}
				}
			}
			return true
		})
	}
	var unused []string
	for p, ok := range allowed {
		if ok && !used[p] {
			unused = append(unused, p)
		}
	}
	slices.Sort(unused)
	for _, p := range unused {
		problems = append(problems, fmt.Sprintf("allowed import %s is not imported by any source: remove it from the list", p))
	}
	return problems, nil
}
