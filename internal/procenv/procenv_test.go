package procenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The environment and the program of a process do not depend on the
// caller's: PATH is Path (run.env can set another: the last wins), a bare
// name is looked up there (relative entries and non-executables skipped),
// ./x is in dir, a path is as it is; a name found nowhere is an error
// naming it and the PATH.
func TestEnvAndProgram(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // the caller's: nothing is looked up there
	env := Env("/rel", []string{"A=1"})
	if strings.Join(env, " ") != "PATH="+Path+" HOME=/rel A=1" {
		t.Fatalf("env %q", env)
	}
	if p, err := Program("sh", "/rel", env); err != nil || !filepath.IsAbs(p) || !strings.HasSuffix(p, "/sh") {
		t.Fatalf("sh: %q, %v", p, err)
	}
	if p, err := Program("./run.sh", "/rel", env); err != nil || p != "/rel/run.sh" {
		t.Fatalf("./run.sh: %q, %v", p, err)
	}
	if p, err := Program("bin/x", "/rel", env); err != nil || p != "bin/x" {
		t.Fatalf("bin/x: %q, %v", p, err)
	}

	own := t.TempDir()
	for name, mode := range map[string]os.FileMode{"tool": 0o755, "data": 0o644} {
		if err := os.WriteFile(filepath.Join(own, name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	withPath := Env("/rel", []string{"PATH=relative:" + own})
	if p, err := Program("tool", "/rel", withPath); err != nil || p != filepath.Join(own, "tool") {
		t.Fatalf("tool in run.env's PATH: %q, %v", p, err)
	}
	if _, err := Program("tool", "/rel", env); err == nil {
		t.Fatal("tool found outside the process's PATH")
	}
	if _, err := Program("data", "/rel", withPath); err == nil || !strings.Contains(err.Error(), `"data"`) || !strings.Contains(err.Error(), own) {
		t.Fatalf("a file that is not executable: %v", err)
	}
}
