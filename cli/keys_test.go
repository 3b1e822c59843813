package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/signing"
)

// runKeysCLI runs the CLI with `keys` available: through Main when the root
// command registers it, else through a root with keysCmd added (same error
// printing as Main for run errors).
func runKeysCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	probe := &app{getenv: os.Getenv, hostname: os.Hostname}
	if c, _, err := probe.rootCmd().Find([]string{"keys"}); err == nil && c.Name() == "keys" {
		return runCLI(t, args...)
	}
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr, getenv: os.Getenv, hostname: os.Hostname}
	root := a.rootCmd()
	root.AddCommand(a.keysCmd())
	root.SetArgs(args)
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := root.ExecuteContextC(ctx); err != nil {
		stderr.WriteString("fleetwave: " + err.Error() + "\n")
		return ExitError, stdout.String(), stderr.String()
	}
	return ExitOK, stdout.String(), stderr.String()
}

var keyIDLine = regexp.MustCompile(`(?m)^key id ([0-9a-f]{16})$`)

// generateKeys runs `keys generate --out dir/ci` and returns the prefix and
// the printed key id.
func generateKeys(t *testing.T) (prefix, id string) {
	t.Helper()
	prefix = filepath.Join(t.TempDir(), "ci")
	code, stdout, stderr := runKeysCLI(t, "keys", "generate", "--out", prefix)
	if code != 0 {
		t.Fatalf("keys generate: exit %d: %s", code, stderr)
	}
	m := keyIDLine.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no key id printed:\n%s", stdout)
	}
	return prefix, m[1]
}

func TestKeysGenerate(t *testing.T) {
	prefix, id := generateKeys(t)
	for path, mode := range map[string]os.FileMode{prefix + ".key": 0o600, prefix + ".pub": 0o644} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want mode %v", path, fi, err, mode)
		}
	}
	pub, err := signing.LoadPublicKey(prefix + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	priv, err := signing.LoadPrivateKey(prefix + ".key")
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(priv.Public()) || signing.KeyID(pub) != id {
		t.Fatalf("key pair does not match or id %s is not %s", id, signing.KeyID(pub))
	}
	before, _ := os.ReadFile(prefix + ".key")

	// Never overwrites either file.
	code, _, stderr := runKeysCLI(t, "keys", "generate", "--out", prefix)
	if code == 0 || !strings.Contains(stderr, "exists") || !strings.Contains(stderr, "--out") {
		t.Errorf("overwrite: exit %d, %q", code, stderr)
	}
	os.Remove(prefix + ".pub")
	if code, _, stderr := runKeysCLI(t, "keys", "generate", "--out", prefix); code == 0 || !strings.Contains(stderr, prefix+".key exists") {
		t.Errorf("overwrite of the private key alone: exit %d, %q", code, stderr)
	}
	if after, _ := os.ReadFile(prefix + ".key"); !bytes.Equal(before, after) {
		t.Error("private key changed by a refused generate")
	}
	if code, _, stderr := runKeysCLI(t, "keys", "generate"); code == 0 || !strings.Contains(stderr, `"out"`) {
		t.Errorf("without --out: exit %d, %q", code, stderr)
	}

	// keys id prints the id of a public key.
	prefix2, id2 := generateKeys(t)
	code, stdout, stderr := runKeysCLI(t, "keys", "id", prefix2+".pub")
	if code != 0 || strings.TrimSpace(stdout) != id2 || id2 == id {
		t.Errorf("keys id: exit %d, %q (want %s), %s", code, stdout, id2, stderr)
	}
	if code, _, stderr := runKeysCLI(t, "keys", "id", prefix2+".key"); code == 0 || !strings.Contains(stderr, "PUBLIC KEY") {
		t.Errorf("keys id of a private key: exit %d, %q", code, stderr)
	}
}

func TestReleaseCreateSigned(t *testing.T) {
	prefix, id := generateKeys(t)
	pub, err := signing.LoadPublicKey(prefix + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	trusted := map[string]ed25519.PublicKey{id: pub}
	f := &fake{}
	addr := serve(t, f)
	artifact := filepath.Join(t.TempDir(), "web.tar.gz")
	if err := os.WriteFile(artifact, []byte("artifact bytes"), 0o644); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.1",
		"--artifact", artifact, "--commit", "abc123", "--commit-time", "2024-05-01T10:00:00Z", "--sign", prefix+".key", "--expires", "48h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wantContains(t, "stdout", stdout, "signed by key "+id)
	f.mu.Lock()
	rel := f.releases[len(f.releases)-1]
	f.mu.Unlock()
	m, err := signing.Verify(rel, trusted, time.Now())
	if err != nil {
		t.Fatalf("created release does not verify: %v", err)
	}
	if m.GetArtifactSha256() != rel.GetArtifact().GetSha256() || m.GetArtifactSize() != int64(len("artifact bytes")) || m.GetCommit() != "abc123" {
		t.Errorf("manifest %v", m)
	}
	if exp := m.GetExpiresAt().AsTime(); exp.Before(start.Add(48*time.Hour)) || exp.After(time.Now().Add(48*time.Hour)) {
		t.Errorf("expires %v, want 48h after %v", exp, start)
	}
	// Not after its expiry, and not with another key.
	if _, err := signing.Verify(rel, trusted, time.Now().Add(49*time.Hour)); err == nil {
		t.Error("verifies after --expires")
	}

	// Default expiry: 30 days; --url releases are signed too.
	code, _, stderr = runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.2",
		"--url", "https://example.com/w.tgz", "--sha256", strings.Repeat("ab", 32), "--size", "7", "--sign", prefix+".key")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f.mu.Lock()
	rel = f.releases[len(f.releases)-1]
	f.mu.Unlock()
	m, err = signing.Verify(rel, trusted, time.Now())
	if err != nil {
		t.Fatalf("url release does not verify: %v", err)
	}
	if d := m.GetExpiresAt().AsTime().Sub(m.GetSignedAt().AsTime()); d != 30*24*time.Hour {
		t.Errorf("default expiry %v", d)
	}

	// Unsigned releases stay unsigned.
	if code, _, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.3", "--artifact", artifact); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f.mu.Lock()
	if s := f.releases[len(f.releases)-1].GetSigned(); s != nil {
		t.Errorf("unsigned release carries %v", s)
	}
	nReleases, nUploads := len(f.releases), len(f.uploads)
	f.mu.Unlock()

	// Bad flags: named, and nothing is uploaded or created.
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"bad duration", []string{"--sign", prefix + ".key", "--expires", "soon"}, []string{"--expires", `"soon"`}},
		{"negative duration", []string{"--sign", prefix + ".key", "--expires", "-1h"}, []string{"invalid --expires -1h0m0s: must be positive"}},
		{"missing key", []string{"--sign", prefix + ".nope"}, []string{"--sign", prefix + ".nope"}},
		{"public key as private", []string{"--sign", prefix + ".pub"}, []string{"--sign", `want "PRIVATE KEY"`}},
		{"expires without sign", []string{"--expires", "1h"}, []string{"--expires needs --sign"}},
		{"empty sign", []string{"--sign", ""}, []string{"--sign: empty"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--coordinator", addr, "release", "create", "web", "--version", "2", "--artifact", artifact}, tt.args...)
			code, _, stderr := runCLI(t, args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			wantContains(t, "stderr", stderr, tt.want...)
		})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.releases) != nReleases || len(f.uploads) != nUploads {
		t.Errorf("bad flags created %d releases, %d uploads", len(f.releases)-nReleases, len(f.uploads)-nUploads)
	}
}
