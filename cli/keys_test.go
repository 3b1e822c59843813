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
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
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
	dir := t.TempDir()
	artifact := filepath.Join(dir, "web.tar.gz")
	if err := os.WriteFile(artifact, []byte("artifact bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	specFile := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(specFile, []byte(webSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	webSpecParsed, err := spec.Parse([]byte(webSpec))
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.1",
		"--artifact", artifact, "--commit", "abc123", "--commit-time", "2024-05-01T10:00:00Z", "--sign", prefix+".key", "--spec", specFile, "--expires", "48h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wantContains(t, "stdout", stdout, "signed by key "+id, "(sequence 1, spec sha256 "+signing.SpecDigest(webSpecParsed)[:12])
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
	// What runs is signed: the spec file's digest; the first signed
	// release of the service is sequence 1.
	if m.GetSpecSha256() != signing.SpecDigest(webSpecParsed) || m.GetSequence() != 1 {
		t.Errorf("manifest spec %s sequence %d", m.GetSpecSha256(), m.GetSequence())
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
		"--url", "https://example.com/w.tgz", "--sha256", strings.Repeat("ab", 32), "--size", "7", "--sign", prefix+".key", "--spec", specFile)
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
	if m.GetSequence() != 2 || m.GetArtifactUrl() != "https://example.com/w.tgz" {
		t.Errorf("second signed release: sequence %d url %q, want 2 and the URL", m.GetSequence(), m.GetArtifactUrl())
	}
	// CI may number releases itself.
	if code, _, stderr := runCLI(t, "--coordinator", addr, "release", "create", "web", "--version", "1.9",
		"--artifact", artifact, "--sign", prefix+".key", "--spec", specFile, "--sequence", "42"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f.mu.Lock()
	m = signing.ParseManifest(f.releases[len(f.releases)-1])
	f.mu.Unlock()
	if m.GetSequence() != 42 {
		t.Errorf("--sequence 42: %d", m.GetSequence())
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
	otherSpec := filepath.Join(dir, "api.yaml")
	if err := os.WriteFile(otherSpec, []byte(strings.Replace(webSpec, "name: web", "name: api", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"bad duration", []string{"--sign", prefix + ".key", "--spec", specFile, "--expires", "soon"}, []string{"--expires", `"soon"`}},
		{"negative duration", []string{"--sign", prefix + ".key", "--spec", specFile, "--expires", "-1h"}, []string{"invalid --expires -1h0m0s: must be positive"}},
		{"missing key", []string{"--sign", prefix + ".nope", "--spec", specFile}, []string{"--sign", prefix + ".nope"}},
		{"public key as private", []string{"--sign", prefix + ".pub", "--spec", specFile}, []string{"--sign", `want "PRIVATE KEY"`}},
		{"expires without sign", []string{"--expires", "1h"}, []string{"--expires, --spec, --sequence and --trusted-keys need --sign"}},
		{"spec without sign", []string{"--spec", specFile}, []string{"need --sign"}},
		{"empty sign", []string{"--sign", ""}, []string{"--sign: empty"}},
		{"sign without spec", []string{"--sign", prefix + ".key"}, []string{"--sign needs --spec FILE"}},
		{"spec of another service", []string{"--sign", prefix + ".key", "--spec", otherSpec}, []string{`is the spec of service "api", not "web"`}},
		{"sequence 0", []string{"--sign", prefix + ".key", "--spec", specFile, "--sequence", "0"}, []string{"invalid --sequence 0"}},
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

// fleetwave rollback --to V --sign KEY sends a statement the agents can
// verify: exactly V's signed manifest, undoing up to the highest sequence
// signed so far, expiring; with --spec it names that spec.
func TestRollbackSigned(t *testing.T) {
	prefix, id := generateKeys(t)
	pub, err := signing.LoadPublicKey(prefix + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	trusted := map[string]ed25519.PublicKey{id: pub}
	priv, err := signing.LoadPrivateKey(prefix + ".key")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Parse([]byte(webSpec))
	if err != nil {
		t.Fatal(err)
	}
	f := &fake{}
	now := time.Now()
	for seq, v := range []string{"1.0", "2.0", "3.0"} {
		r := &v1.Release{Service: "web", Version: v, Artifact: &v1.Artifact{Sha256: strings.Repeat("ab", 32), Size: 7}}
		if r.Signed, err = signing.Sign(signing.Manifest(r, sp, uint64(seq+1), now, now.Add(time.Hour)), priv); err != nil {
			t.Fatal(err)
		}
		f.releases = append(f.releases, r)
	}
	f.releases = append(f.releases, &v1.Release{Service: "web", Version: "0.9", Artifact: &v1.Artifact{Sha256: strings.Repeat("ab", 32), Size: 7}})
	addr := serve(t, f)
	dir := t.TempDir()
	specFile := filepath.Join(dir, "web.yaml")
	changed := strings.Replace(webSpec, `"--listen"`, `"--verbose", "--listen"`, 1)
	if err := os.WriteFile(specFile, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runCLI(t, "--coordinator", addr, "rollback", "web", "--to", "1.0", "--sign", prefix+".key")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wantContains(t, "stdout", stdout, "started")
	f.mu.Lock()
	req := f.rollbacks[len(f.rollbacks)-1]
	f.mu.Unlock()
	if req.GetToVersion() != "1.0" || req.GetSigned() == nil {
		t.Fatalf("request %v", req)
	}
	st, err := signing.VerifyRollback(req.GetSigned(), f.releases[0], trusted, time.Now())
	if err != nil {
		t.Fatalf("statement does not verify: %v", err)
	}
	if st.GetMaxFloor() != 3 || st.GetSpecSha256() != "" || st.GetExpiresAt().AsTime().Sub(st.GetSignedAt().AsTime()) != signing.DefaultRollbackExpiry {
		t.Errorf("statement %v", st)
	}
	// --spec: the statement names the spec the release runs with now.
	if code, _, stderr := runCLI(t, "--coordinator", addr, "rollback", "web", "--to", "1.0", "--sign", prefix+".key", "--spec", specFile, "--expires", "1h"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	changedSpec, err := spec.Parse([]byte(changed))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	req = f.rollbacks[len(f.rollbacks)-1]
	f.mu.Unlock()
	if st, err := signing.VerifyRollback(req.GetSigned(), f.releases[0], trusted, time.Now()); err != nil || st.GetSpecSha256() != signing.SpecDigest(changedSpec) {
		t.Errorf("with --spec: %v %v", st, err)
	}
	// Unsigned rollbacks stay as they were.
	if code, _, stderr := runCLI(t, "--coordinator", addr, "rollback", "web"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	f.mu.Lock()
	if r := f.rollbacks[len(f.rollbacks)-1]; r.GetSigned() != nil || r.GetToVersion() != "" {
		t.Errorf("unsigned rollback sent %v", r)
	}
	n := len(f.rollbacks)
	f.mu.Unlock()
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"sign without to", []string{"--sign", prefix + ".key"}, 1, "--sign needs --to VERSION"},
		{"spec without sign", []string{"--to", "1.0", "--spec", specFile}, 1, "need --sign"},
		{"unsigned target", []string{"--to", "0.9", "--sign", prefix + ".key"}, 1, "--to 0.9: the release is not signed"},
		{"no such release", []string{"--to", "7.0", "--sign", prefix + ".key"}, 1, "--to 7.0: no such release"},
		{"bad key", []string{"--to", "1.0", "--sign", prefix + ".pub"}, 1, `want "PRIVATE KEY"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, append([]string{"--coordinator", addr, "rollback", "web"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d", code, tt.code)
			}
			wantContains(t, "stderr", stderr, tt.want)
		})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.rollbacks) != n {
		t.Errorf("bad flags sent %d rollbacks", len(f.rollbacks)-n)
	}
}
