package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func testRelease() *v1.Release {
	return &v1.Release{
		Service:    "web",
		Version:    "1.2.3",
		Artifact:   &v1.Artifact{Sha256: strings.Repeat("ab", 32), Size: 4242, Url: "https://example.com/a.tgz"},
		Commit:     "0123456789abcdef",
		CommitTime: timestamppb.New(t0.Add(-time.Hour)),
		CreatedAt:  timestamppb.New(t0),
		CreatedBy:  "ci@build",
	}
}

// newKey returns a generated key pair, parsed.
func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pubPEM, privPEM, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func signed(t testing.TB, rel *v1.Release, priv ed25519.PrivateKey, signedAt, expiresAt time.Time) *v1.Release {
	t.Helper()
	sm, err := Sign(Manifest(rel, signedAt, expiresAt), priv)
	if err != nil {
		t.Fatal(err)
	}
	rel = proto.Clone(rel).(*v1.Release)
	rel.Signed = sm
	return rel
}

func TestKeyFilesAndID(t *testing.T) {
	pubPEM, privPEM, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pubPEM), "BEGIN PUBLIC KEY") || !strings.Contains(string(privPEM), "BEGIN PRIVATE KEY") {
		t.Fatalf("PEM types: %s %s", pubPEM, privPEM)
	}
	dir := t.TempDir()
	pubPath, privPath := filepath.Join(dir, "k.pub"), filepath.Join(dir, "k.key")
	os.WriteFile(pubPath, pubPEM, 0o644)
	os.WriteFile(privPath, privPEM, 0o600)
	pub, err := LoadPublicKey(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := LoadPrivateKey(privPath)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(priv.Public()) {
		t.Fatal("public key does not belong to the private key")
	}
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	id := KeyID(pub)
	if id != hex.EncodeToString(sum[:])[:16] || len(id) != KeyIDLen {
		t.Fatalf("KeyID %q", id)
	}
	if KeyID(ed25519.PublicKey{1, 2}) != "" {
		t.Error("KeyID of a short key is not empty")
	}
	keys, err := LoadPublicKeys([]string{pubPath, pubPath})
	if err != nil || len(keys) != 1 || !keys[id].Equal(pub) {
		t.Fatalf("LoadPublicKeys: %v %v", keys, err)
	}
	// Wrong files: named in the error.
	if _, err := LoadPublicKey(privPath); err == nil || !strings.Contains(err.Error(), privPath) || !strings.Contains(err.Error(), `want "PUBLIC KEY"`) {
		t.Errorf("private key as public: %v", err)
	}
	if _, err := LoadPrivateKey(pubPath); err == nil || !strings.Contains(err.Error(), `want "PRIVATE KEY"`) {
		t.Errorf("public key as private: %v", err)
	}
	if _, err := LoadPublicKeys([]string{pubPath, filepath.Join(dir, "nope.pub")}); err == nil || !strings.Contains(err.Error(), "nope.pub") {
		t.Errorf("missing file: %v", err)
	}
	garbage := filepath.Join(dir, "g.pub")
	os.WriteFile(garbage, []byte("hello"), 0o644)
	if _, err := LoadPublicKey(garbage); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Errorf("garbage: %v", err)
	}
	big := filepath.Join(dir, "big.pub")
	os.WriteFile(big, make([]byte, maxKeyFileBytes+1), 0o644)
	if _, err := LoadPublicKey(big); err == nil || !strings.Contains(err.Error(), "over") {
		t.Errorf("big file: %v", err)
	}
	if _, err := LoadPublicKey(""); err == nil {
		t.Error("empty path accepted")
	}
}

func TestSignVerify(t *testing.T) {
	pub, priv := newKey(t)
	trusted := map[string]ed25519.PublicKey{KeyID(pub): pub}
	rel := signed(t, testRelease(), priv, t0, t0.Add(24*time.Hour))
	if rel.Signed.KeyId != KeyID(pub) || len(rel.Signed.Signature) != 64 {
		t.Fatalf("signed %v", rel.Signed)
	}
	m, err := Verify(rel, trusted, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if m.GetVersion() != "1.2.3" || m.GetArtifactSize() != 4242 || !m.GetExpiresAt().AsTime().Equal(t0.Add(24*time.Hour)) {
		t.Errorf("manifest %v", m)
	}
	// Deterministic: the same manifest signs to the same bytes.
	again, _ := Sign(Manifest(testRelease(), t0, t0.Add(24*time.Hour)), priv)
	if !proto.Equal(again, rel.Signed) {
		t.Error("signing is not deterministic")
	}
	// Fields outside the manifest (created_at, created_by) may change.
	rel2 := proto.Clone(rel).(*v1.Release)
	rel2.CreatedBy, rel2.CreatedAt = "someone", nil
	if _, err := Verify(rel2, trusted, t0); err != nil {
		t.Errorf("fields outside the manifest: %v", err)
	}
	if m.GetArtifactUrl() != "https://example.com/a.tgz" {
		t.Errorf("manifest url %q", m.GetArtifactUrl())
	}
	// A release without commit time verifies too.
	bare := testRelease()
	bare.CommitTime, bare.Commit = nil, ""
	if _, err := Verify(signed(t, bare, priv, t0, t0.Add(time.Hour)), trusted, t0); err != nil {
		t.Errorf("no commit: %v", err)
	}
	if _, err := Sign(&v1.ReleaseManifest{}, ed25519.PrivateKey{1}); err == nil {
		t.Error("short private key accepted")
	}
	if _, err := Sign(&v1.ReleaseManifest{Commit: strings.Repeat("x", MaxManifestBytes)}, priv); err == nil {
		t.Error("oversized manifest signed")
	}
}

func TestVerifyRefuses(t *testing.T) {
	pub, priv := newKey(t)
	otherPub, otherPriv := newKey(t)
	id := KeyID(pub)
	trusted := map[string]ed25519.PublicKey{id: pub}
	good := func() *v1.Release { return signed(t, testRelease(), priv, t0, t0.Add(24*time.Hour)) }
	resign := func(mut func(m *v1.ReleaseManifest)) *v1.Release {
		rel := testRelease()
		m := Manifest(rel, t0, t0.Add(24*time.Hour))
		mut(m)
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		rel.Signed = &v1.SignedManifest{Manifest: b, Signature: ed25519.Sign(priv, b), KeyId: id}
		return rel
	}
	tests := []struct {
		name string
		rel  *v1.Release
		now  time.Time
		kind error
		want []string
	}{
		{"unsigned", testRelease(), t0, ErrUnsigned, []string{"release 1.2.3: unsigned"}},
		{"nil release", nil, t0, ErrUnsigned, []string{"unsigned"}},
		{"unknown key", signed(t, testRelease(), otherPriv, t0, t0.Add(time.Hour)), t0, ErrUnknownKey,
			[]string{"release 1.2.3: signature by unknown key " + KeyID(otherPub)}},
		{"key id claimed, other key signed", func() *v1.Release {
			r := signed(t, testRelease(), otherPriv, t0, t0.Add(time.Hour))
			r.Signed.KeyId = id
			return r
		}(), t0, ErrBadSignature, []string{"signature by key " + id + " does not verify"}},
		{"flipped bit", func() *v1.Release { r := good(); r.Signed.Signature[3] ^= 1; return r }(), t0, ErrBadSignature, []string{"does not verify"}},
		{"manifest changed", func() *v1.Release { r := good(); r.Signed.Manifest[len(r.Signed.Manifest)-1] ^= 1; return r }(), t0, ErrBadSignature, []string{"does not verify"}},
		{"short signature", func() *v1.Release { r := good(); r.Signed.Signature = r.Signed.Signature[:63]; return r }(), t0, ErrBadSignature, []string{"63 bytes, want 64"}},
		{"huge manifest", func() *v1.Release { r := good(); r.Signed.Manifest = make([]byte, MaxManifestBytes+1); return r }(), t0, ErrMalformed, []string{"4097 bytes"}},
		{"empty manifest", func() *v1.Release { r := good(); r.Signed.Manifest = nil; return r }(), t0, ErrMalformed, []string{"0 bytes"}},
		{"signed garbage", func() *v1.Release {
			r := testRelease()
			b := []byte{0xff, 0xff, 0xff}
			r.Signed = &v1.SignedManifest{Manifest: b, Signature: ed25519.Sign(priv, b), KeyId: id}
			return r
		}(), t0, ErrMalformed, []string{"does not decode"}},
		{"sha256 differs", func() *v1.Release { r := good(); r.Artifact.Sha256 = strings.Repeat("cd", 32); return r }(), t0, ErrMismatch,
			[]string{"artifact sha256 " + strings.Repeat("ab", 32) + ", the release " + strings.Repeat("cd", 32)}},
		{"size differs", func() *v1.Release { r := good(); r.Artifact.Size = 1; return r }(), t0, ErrMismatch, []string{"artifact size 4242, the release 1"}},
		{"version differs", func() *v1.Release { r := good(); r.Version = "9"; return r }(), t0, ErrMismatch, []string{"release 9:", "version 1.2.3, the release 9"}},
		{"service differs", func() *v1.Release { r := good(); r.Service = "api"; return r }(), t0, ErrMismatch, []string{"service web, the release api"}},
		// The URL is signed: the coordinator cannot send agents to another
		// address (an internal page) for a signed release, nor take the URL
		// away or add one.
		{"url differs", func() *v1.Release { r := good(); r.Artifact.Url = "http://10.0.0.1/admin"; return r }(), t0, ErrMismatch,
			[]string{"artifact url https://example.com/a.tgz, the release http://10.0.0.1/admin"}},
		{"url removed", func() *v1.Release { r := good(); r.Artifact.Url = ""; return r }(), t0, ErrMismatch, []string{"artifact url"}},
		{"commit differs", func() *v1.Release { r := good(); r.Commit = "beef"; return r }(), t0, ErrMismatch, []string{"commit 0123456789abcdef, the release beef"}},
		{"commit time differs", func() *v1.Release { r := good(); r.CommitTime = nil; return r }(), t0, ErrMismatch, []string{"commit time", "(none)"}},
		{"expired", good(), t0.Add(24 * time.Hour), ErrExpired,
			[]string{"expired at 2024-05-02T12:00:00Z (now 2024-05-02T12:00:00Z)"}},
		{"signed in the future", good(), t0.Add(-6 * time.Minute), ErrNotYetValid, []string{"signed_at 2024-05-01T12:00:00Z, more than 5m0s after now (2024-05-01T11:54:00Z)"}},
		{"no expiry", resign(func(m *v1.ReleaseManifest) { m.ExpiresAt = nil }), t0, ErrMalformed, []string{"expires_at"}},
		{"no signed_at", resign(func(m *v1.ReleaseManifest) { m.SignedAt = nil }), t0, ErrMalformed, []string{"signed_at"}},
		{"bad key id text", func() *v1.Release { r := good(); r.Signed.KeyId = strings.Repeat("\x00z", 100); return r }(), t0, ErrUnknownKey, []string{`"\x00z`, "..."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Verify(tt.rel, trusted, tt.now)
			if err == nil || m != nil {
				t.Fatalf("accepted: %v", m)
			}
			if !errors.Is(err, tt.kind) {
				t.Errorf("error %q is not %v", err, tt.kind)
			}
			var ve *Error
			if !errors.As(err, &ve) {
				t.Errorf("error %T is not *Error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// Within the skew is fine; so is one nanosecond before expiry.
	if _, err := Verify(good(), trusted, t0.Add(-4*time.Minute)); err != nil {
		t.Errorf("signed 4m ahead: %v", err)
	}
	if _, err := Verify(good(), trusted, t0.Add(24*time.Hour-1)); err != nil {
		t.Errorf("just before expiry: %v", err)
	}
	// No trusted keys: everything is unknown.
	if _, err := Verify(good(), nil, t0); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("no trusted keys: %v", err)
	}
}

// FuzzVerify feeds Verify arbitrary releases: it must never panic, and
// whatever it accepts must be signed by the trusted key and match.
func FuzzVerify(f *testing.F) {
	seed := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	pub := seed.Public().(ed25519.PublicKey)
	trusted := map[string]ed25519.PublicKey{KeyID(pub): pub}
	good := signed(f, testRelease(), seed, t0, t0.Add(time.Hour))
	for _, r := range []*v1.Release{good, testRelease(), {}, {Signed: &v1.SignedManifest{}},
		{Signed: &v1.SignedManifest{KeyId: KeyID(pub), Signature: make([]byte, 64), Manifest: []byte{1}}}} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x42, 0x03, 0x1a, 0x01, 0x41})
	f.Fuzz(func(t *testing.T, data []byte) {
		rel := &v1.Release{}
		if proto.Unmarshal(data, rel) != nil {
			return
		}
		m, err := Verify(rel, trusted, t0)
		if err != nil {
			if m != nil {
				t.Fatal("manifest returned with an error")
			}
			var ve *Error
			if !errors.As(err, &ve) || len(err.Error()) > 1024 {
				t.Fatalf("error %T %d bytes", err, len(err.Error()))
			}
			return
		}
		if !ed25519.Verify(pub, rel.GetSigned().GetManifest(), rel.GetSigned().GetSignature()) ||
			m.GetVersion() != rel.GetVersion() || m.GetArtifactSha256() != rel.GetArtifact().GetSha256() ||
			m.GetArtifactSize() != rel.GetArtifact().GetSize() || m.GetArtifactUrl() != rel.GetArtifact().GetUrl() ||
			!t0.Before(m.GetExpiresAt().AsTime()) {
			t.Fatalf("accepted a release that does not verify: %v", rel)
		}
	})
}
