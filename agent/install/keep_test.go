package install

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestKeepArtifacts: with KeepArtifacts, a staged release's verified
// artifact stays under artifacts/<sha256>, readable by OpenArtifact, until
// no staged release was unpacked from it; without it nothing is kept.
func TestKeepArtifacts(t *testing.T) {
	off := newInstaller(t, Limits{})
	a1 := gz(t, tarBytes(t, entry{name: "v", body: "one"}))
	if _, err := stageBytes(t, off, "web", "1", a1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := off.OpenArtifact(digest(a1)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("kept without KeepArtifacts: %v", err)
	}

	in := newInstaller(t, Limits{})
	in.KeepArtifacts()
	a2 := gz(t, tarBytes(t, entry{name: "v", body: "two"}))
	for _, s := range []struct {
		service, version string
		art              []byte
	}{{"web", "1", a1}, {"web", "2", a2}, {"api", "1", a1}} {
		if _, err := stageBytes(t, in, s.service, s.version, s.art); err != nil {
			t.Fatal(err)
		}
	}
	f, size, err := in.OpenArtifact(digest(a1))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if size != int64(len(a1)) || !bytes.Equal(b, a1) {
		t.Fatalf("kept artifact: %d bytes, differs: %v", size, !bytes.Equal(b, a1))
	}
	if _, _, err := in.OpenArtifact("../../etc/passwd"); err == nil {
		t.Fatal("OpenArtifact took a path")
	}
	// Pruning web's release 1 keeps a1 (api 1 has it); removing api drops it.
	if err := in.Switch("web", "2"); err != nil {
		t.Fatal(err)
	}
	if err := in.Prune("web"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := in.OpenArtifact(digest(a1)); err != nil {
		t.Fatalf("a1 dropped while api 1 is staged from it: %v", err)
	}
	if err := in.RemoveService("api"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := in.OpenArtifact(digest(a1)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a1 kept with no release staged from it: %v", err)
	}
	if _, _, err := in.OpenArtifact(digest(a2)); err != nil {
		t.Fatalf("a2 (current of web) not kept: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(in.dataDir, artifactsDirName)); len(ents) != 1 {
		t.Fatalf("artifacts dir holds %d files, want 1", len(ents))
	}
}

// TestDropRelease: a release staged ahead and no longer wanted is removed
// with its kept artifact; the current one is refused; bad names are errors.
func TestDropRelease(t *testing.T) {
	in := newInstaller(t, Limits{})
	in.KeepArtifacts()
	a1 := gz(t, tarBytes(t, entry{name: "v", body: "one"}))
	a2 := gz(t, tarBytes(t, entry{name: "v", body: "two"}))
	for v, art := range map[string][]byte{"1": a1, "2": a2} {
		if _, err := stageBytes(t, in, "web", v, art); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Switch("web", "1"); err != nil {
		t.Fatal(err)
	}
	if err := in.DropRelease("web", "1"); err == nil {
		t.Fatal("dropped the current release")
	}
	if err := in.DropRelease("web", "../x"); err == nil {
		t.Fatal("dropped a path")
	}
	if err := in.DropRelease("web", "2"); err != nil {
		t.Fatal(err)
	}
	if in.Staged("web", "2", digest(a2)) {
		t.Fatal("release 2 still staged")
	}
	if _, err := os.Lstat(in.ReleaseDir("web", "2")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("release 2's directory: %v", err)
	}
	if _, _, err := in.OpenArtifact(digest(a2)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a2 kept with no release staged from it: %v", err)
	}
	if !in.Staged("web", "1", digest(a1)) {
		t.Fatal("release 1 lost")
	}
}
