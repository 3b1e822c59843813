package cli

import (
	"crypto/ed25519"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// forgedRelease is a record a compromised coordinator adds to its
// ListReleases answer (or a deployer, with no key, stores): a manifest
// claiming sequence seq with a signature nobody's key made.
func forgedRelease(t *testing.T, version string, seq uint64) *v1.Release {
	t.Helper()
	r := &v1.Release{Service: "web", Version: version, Artifact: &v1.Artifact{Sha256: strings.Repeat("cd", 32), Size: 7}}
	b, err := proto.Marshal(signing.Manifest(r, nil, seq, time.Now(), time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	r.Signed = &v1.SignedManifest{Manifest: b, Signature: make([]byte, ed25519.SignatureSize), KeyId: "0000000000000000"}
	return r
}

// signedRelease is web's release version signed with the key file at
// keyPath, at sequence seq.
func signedRelease(t *testing.T, keyPath, version string, seq uint64) *v1.Release {
	t.Helper()
	priv, err := signing.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Parse([]byte(webSpec))
	if err != nil {
		t.Fatal(err)
	}
	r := &v1.Release{Service: "web", Version: version, Artifact: &v1.Artifact{Sha256: strings.Repeat("ab", 32), Size: 7}}
	now := time.Now()
	if r.Signed, err = signing.Sign(signing.Manifest(r, sp, seq, now, now.Add(time.Hour)), priv); err != nil {
		t.Fatal(err)
	}
	return r
}

// webSpecFile writes web's spec to a file for --spec.
func webSpecFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(p, []byte(webSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// createSigned runs release create of web's version (a URL artifact)
// signed with keyPath, and returns its exit code and stderr.
func createSigned(t *testing.T, addr, keyPath, specFile, version string, more ...string) (int, string) {
	t.Helper()
	args := append([]string{"--coordinator", addr, "release", "create", "web", "--version", version,
		"--url", "https://example.com/w.tgz", "--sha256", strings.Repeat("ab", 32), "--size", "7", "--sign", keyPath, "--spec", specFile}, more...)
	code, _, stderr := runCLI(t, args...)
	return code, stderr
}

func trustedOf(t *testing.T, pubPaths ...string) map[string]ed25519.PublicKey {
	t.Helper()
	keys, err := signing.LoadPublicKeys(pubPaths)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestRollbackMaxFloorCountsVerifiedOnly: a rollback statement's max_floor
// is the highest sequence signed by a trusted key. A listed record claiming
// 2^64-1 with a signature that does not verify used to become the
// statement's max_floor: valid on every host, it let the coordinator take
// hosts back to 1.0 past releases signed after it (an attack review).
// Another operator key's releases count when given with --trusted-keys.
func TestRollbackMaxFloorCountsVerifiedOnly(t *testing.T) {
	ci, _ := generateKeys(t)
	other, _ := generateKeys(t)
	f := &fake{}
	for seq, v := range []string{"1.0", "2.0", "3.0"} {
		f.releases = append(f.releases, signedRelease(t, ci+".key", v, uint64(seq+1)))
	}
	f.releases = append(f.releases, forgedRelease(t, "9.9", math.MaxUint64), signedRelease(t, other+".key", "4.0", 4))
	addr := serve(t, f)
	trusted := trustedOf(t, ci+".pub")
	for _, c := range []struct {
		args []string
		want uint64
	}{
		{nil, 3},
		{[]string{"--trusted-keys", other + ".pub"}, 4},
	} {
		args := append([]string{"--coordinator", addr, "rollback", "web", "--to", "1.0", "--sign", ci + ".key"}, c.args...)
		code, _, stderr := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, stderr)
		}
		if !strings.Contains(stderr, "warning: release 9.9 claims sequence 18446744073709551615") {
			t.Errorf("%v: stderr %q, want a warning naming the record not counted", c.args, stderr)
		}
		f.mu.Lock()
		req := f.rollbacks[len(f.rollbacks)-1]
		f.mu.Unlock()
		st, err := signing.VerifyRollback(req.GetSigned(), f.releases[0], trusted, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if st.GetMaxFloor() != c.want {
			t.Errorf("%v: signed max_floor %d, want %d (the highest sequence a trusted key signed)", c.args, st.GetMaxFloor(), c.want)
		}
	}
}

// TestReleaseSequenceCountsVerifiedOnly: release create --sign without
// --sequence signs one above the highest sequence a trusted key signed. A
// listed record claiming 2^64-2 used to make CI sign the next release at
// 2^64-1 (agents' floors at the maximum for good) and the one after at 0
// (overflow: refused by every agent), freezing the service's signed
// releases. A release genuinely signed at the maximum leaves no sequence:
// refused, saying so.
func TestReleaseSequenceCountsVerifiedOnly(t *testing.T) {
	ci, _ := generateKeys(t)
	f := &fake{}
	f.releases = append(f.releases, signedRelease(t, ci+".key", "1.0", 7), forgedRelease(t, "9.9", math.MaxUint64-1))
	addr := serve(t, f)
	specFile := webSpecFile(t)
	create := func(version string) (int, string) { return createSigned(t, addr, ci+".key", specFile, version) }
	trusted := trustedOf(t, ci+".pub")
	for i, v := range []string{"1.1", "1.2"} {
		code, stderr := create(v)
		if code != 0 {
			t.Fatalf("create %s: exit %d: %s", v, code, stderr)
		}
		if !strings.Contains(stderr, "warning: release 9.9 claims sequence 18446744073709551614 (key 0000000000000000), above the highest that verifies") {
			t.Errorf("create %s: stderr %q, want a warning naming the record not counted", v, stderr)
		}
		f.mu.Lock()
		rel := f.releases[len(f.releases)-1]
		f.mu.Unlock()
		m, err := signing.Verify(rel, trusted, time.Now())
		if err != nil {
			t.Fatalf("release %s as agents see it: %v", v, err)
		}
		if want := uint64(8 + i); m.GetSequence() != want {
			t.Errorf("release %s signed with sequence %d, want %d", v, m.GetSequence(), want)
		}
	}
	f.mu.Lock()
	f.releases = append(f.releases, signedRelease(t, ci+".key", "max", math.MaxUint64))
	f.mu.Unlock()
	if code, stderr := create("1.3"); code == 0 || !strings.Contains(stderr, "the largest there is: no sequence is left above it") {
		t.Errorf("create after a release at the largest sequence: exit %d: %s", code, stderr)
	}
}

// TestReleaseSequenceAfterKeyRotation: releases signed by a key rotated out
// (no longer --sign's, not given with --trusted-keys) do not count: the
// CLI signs a lower sequence, which agents that accepted them refuse, and
// says so on stderr, naming the release and key. With the old public key
// given with --trusted-keys they count. --trusted-keys and --sequence
// together are refused.
func TestReleaseSequenceAfterKeyRotation(t *testing.T) {
	oldKey, oldID := generateKeys(t)
	newKey, _ := generateKeys(t)
	f := &fake{}
	for seq, v := range []string{"1.0", "2.0", "3.0"} {
		f.releases = append(f.releases, signedRelease(t, oldKey+".key", v, uint64(seq+1)))
	}
	addr := serve(t, f)
	specFile := webSpecFile(t)
	create := func(version string, more ...string) (uint64, string) {
		code, stderr := createSigned(t, addr, newKey+".key", specFile, version, more...)
		if code != 0 {
			t.Fatalf("create %s: exit %d: %s", version, code, stderr)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		return signing.ParseManifest(f.releases[len(f.releases)-1]).GetSequence(), stderr
	}
	seq, stderr := create("4.0")
	if want := "warning: release 3.0 claims sequence 3 (key " + oldID + ")"; seq != 1 || !strings.Contains(stderr, want) {
		t.Errorf("without the old key: sequence %d, stderr %q; want 1 and %q", seq, stderr, want)
	}
	f.mu.Lock()
	f.releases = f.releases[:3]
	f.mu.Unlock()
	if seq, stderr := create("4.0", "--trusted-keys", oldKey+".pub"); seq != 4 || stderr != "" {
		t.Errorf("with --trusted-keys of the old key: sequence %d, stderr %q; want 4 and no warning", seq, stderr)
	}
	code, stderr := createSigned(t, addr, newKey+".key", specFile, "5.0", "--sequence", "9", "--trusted-keys", oldKey+".pub")
	if code == 0 || !strings.Contains(stderr, "--trusted-keys counts releases to choose the sequence: not with --sequence") {
		t.Errorf("--sequence with --trusted-keys: exit %d, %q", code, stderr)
	}
}
