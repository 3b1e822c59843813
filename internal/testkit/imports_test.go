package testkit

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

const importPath = "github.com/fleetwave/fleetwave/internal/testkit"

// Only tests import testkit: no product code and no non-test helper
// (testfleet, testcluster) may depend on it.
func TestOnlyTestsImportTestkit(t *testing.T) {
	root, err := testfleet.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked, importers := 0, 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p != importPath {
				continue
			}
			importers++
			if !strings.HasSuffix(path, "_test.go") {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s imports testkit: only _test.go files may", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Guards against checking nothing: the module has hundreds of files,
	// and the tests of several packages use testkit.
	if checked < 100 || importers < 5 {
		t.Fatalf("checked %d files, %d importing testkit: not the module?", checked, importers)
	}
}
