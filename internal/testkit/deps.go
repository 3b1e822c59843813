package testkit

import (
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// Module is the import path prefix of Fleetwave's packages.
const Module = "github.com/fleetwave/fleetwave/"

var depsOnce struct {
	sync.Once
	deps map[string]map[string]bool
	err  error
	out  []byte
}

// ModuleDeps returns, for every package of the module, the set of import
// paths it depends on directly or not (`go list -deps`, test files not
// counted), itself included. It runs `go list` once per test binary.
func ModuleDeps(t testing.TB) map[string]map[string]bool {
	t.Helper()
	depsOnce.Do(func() {
		cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}{{range .Deps}} {{.}}{{end}}", Module+"...")
		depsOnce.out, depsOnce.err = cmd.Output()
		if depsOnce.err != nil {
			return
		}
		depsOnce.deps = map[string]map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(string(depsOnce.out)), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			set := map[string]bool{f[0]: true}
			for _, d := range f[1:] {
				set[d] = true
			}
			depsOnce.deps[f[0]] = set
		}
	})
	if depsOnce.err != nil {
		if ee, ok := depsOnce.err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", depsOnce.err, ee.Stderr)
		}
		t.Fatalf("go list: %v", depsOnce.err)
	}
	return depsOnce.deps
}

// DepRule is a claim about a package's dependencies, as a package doc or
// docs/ARCHITECTURE.md states it.
type DepRule struct {
	// Pkg is a module-relative import path ("agent/lifecycle"); with a
	// "/..." suffix it is every package at or below that path.
	Pkg string
	// Forbid lists import path prefixes the package must not depend on
	// (module-relative ones are written "./coordinator", others in full).
	Forbid []string
	// Allow lists exact import paths exempted from Forbid (module-relative
	// with "./").
	Allow []string
	// Include lists packages the dependency set must contain (module-relative
	// with "./"), so that the rule still guards what it is meant to.
	Include []string
	// Why is what the rule protects, printed with a violation.
	Why string
}

func expand(p string) string {
	if rest, ok := strings.CutPrefix(p, "./"); ok {
		return Module + rest
	}
	return p
}

// CheckDeps fails t for every dependency of the rule's package(s) that the
// rule forbids, and for every package it should include but does not. A
// rule that matches no package fails too, so renamed packages do not leave
// rules that check nothing.
func CheckDeps(t testing.TB, r DepRule) {
	t.Helper()
	all := ModuleDeps(t)
	base, tree := strings.CutSuffix(r.Pkg, "/...")
	base = Module + base
	matched := 0
	for pkg, deps := range all {
		if pkg != base && !(tree && strings.HasPrefix(pkg, base+"/")) {
			continue
		}
		matched++
		for d := range deps {
			if d == pkg || !forbidden(d, r) {
				continue
			}
			t.Errorf("%s depends on %s (%s)", pkg, d, r.Why)
		}
		for _, inc := range r.Include {
			if !deps[expand(inc)] {
				t.Errorf("%s does not depend on %s: the rule %q no longer guards it", pkg, expand(inc), r.Why)
			}
		}
	}
	if matched == 0 {
		t.Errorf("rule for %s matches no package", r.Pkg)
	}
}

func forbidden(dep string, r DepRule) bool {
	for _, a := range r.Allow {
		if dep == expand(a) {
			return false
		}
	}
	for _, f := range r.Forbid {
		f = expand(f)
		if dep == f || strings.HasPrefix(dep, strings.TrimSuffix(f, "/")+"/") {
			return true
		}
	}
	return false
}
