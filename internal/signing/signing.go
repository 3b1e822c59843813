// Package signing owns signed release manifests: ed25519 key pairs in PEM
// files, the manifest CI signs for a release (service, version, artifact
// sha256, size and URL, commit, a digest of the spec it runs with, its
// sequence in the service's signed history, signing time, expiry), the
// rollback statements operators sign to go back below a sequence, and the
// checks an agent makes before it installs anything (Verify,
// VerifyRollback, CheckSpec).
//
// It uses only the standard library, protobuf and the generated v1 types. It
// must not import the agent, the coordinator, etcd or grpc. Nothing in it
// panics on input from the network or a file.
package signing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
	"unicode"

	"github.com/fleetwave/fleetwave/internal/specdiff"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Limits on a SignedManifest.
const (
	// MaxManifestBytes bounds the serialized manifest.
	MaxManifestBytes = 4 << 10
	// MaxClockSkew is how far in the future signed_at may be.
	MaxClockSkew = 5 * time.Minute
	// KeyIDLen is the length of a key id in hex digits.
	KeyIDLen = 16
	// maxKeyFileBytes bounds a key file read from disk.
	maxKeyFileBytes = 64 << 10
)

// PEM block types of the key files.
const (
	pemPublic  = "PUBLIC KEY"
	pemPrivate = "PRIVATE KEY"
)

// Sentinel errors of Verify, matched with errors.Is. The error itself names
// the release, the key id, the field or the times.
var (
	ErrUnsigned     = errors.New("release is unsigned")
	ErrUnknownKey   = errors.New("signed by an untrusted key")
	ErrBadSignature = errors.New("bad signature")
	ErrMalformed    = errors.New("malformed manifest")
	ErrMismatch     = errors.New("manifest does not match the release")
	ErrExpired      = errors.New("manifest expired")
	ErrNotYetValid  = errors.New("manifest signed in the future")
	// ErrIncomplete: a manifest without a spec digest or a sequence (signed
	// by a fleetwave before they were signed): it does not say what runs.
	ErrIncomplete = errors.New("manifest does not cover the spec and sequence")
	// ErrSpecMismatch: the assigned spec is not the one signed.
	ErrSpecMismatch = errors.New("spec does not match the signed one")
	// ErrBelowFloor: a release older than one the agent accepted, without
	// a rollback statement that allows it.
	ErrBelowFloor = errors.New("release below the floor")
)

// Error is what Verify returns: a message naming what failed and one of the
// sentinel errors above (errors.Is matches it).
type Error struct {
	Kind error
	msg  string
}

func (e *Error) Error() string { return e.msg }
func (e *Error) Unwrap() error { return e.Kind }

func fail(kind error, format string, args ...any) error {
	return &Error{Kind: kind, msg: fmt.Sprintf(format, args...)}
}

// GenerateKey makes an ed25519 key pair and returns it PEM-encoded: the
// public key as PKIX ("PUBLIC KEY"), the private key as PKCS #8
// ("PRIVATE KEY").
func GenerateKey() (pub, priv []byte, err error) {
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pk)
	if err != nil {
		return nil, nil, fmt.Errorf("encode public key: %w", err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(sk)
	if err != nil {
		return nil, nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: pubDER}),
		pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: privDER}), nil
}

// KeyID is the id of a public key: the first 16 hex digits of the sha256 of
// its PKIX DER encoding ("" for a key that cannot be encoded).
func KeyID(pub ed25519.PublicKey) string {
	if len(pub) != ed25519.PublicKeySize {
		return ""
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])[:KeyIDLen]
}

// ParsePublicKey decodes a PEM "PUBLIC KEY" block holding an ed25519 key.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	der, err := pemBlock(data, pemPublic)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key is a %T, not an ed25519 key", k)
	}
	return pub, nil
}

// ParsePrivateKey decodes a PEM "PRIVATE KEY" (PKCS #8) block holding an
// ed25519 key.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	der, err := pemBlock(data, pemPrivate)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok || len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("private key is a %T, not an ed25519 key", k)
	}
	return priv, nil
}

func pemBlock(data []byte, typ string) ([]byte, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("no PEM %q block found", typ)
	}
	if b.Type != typ {
		return nil, fmt.Errorf("PEM block is %q, want %q", show(b.Type, 40), typ)
	}
	return b.Bytes, nil
}

// LoadPublicKey reads an ed25519 public key from a PEM file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	pub, err := ParsePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	return pub, nil
}

// LoadPrivateKey reads an ed25519 private key from a PEM (PKCS #8) file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	priv, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	return priv, nil
}

// LoadPublicKeys reads public key files and returns the keys by key id. The
// same key given twice is kept once.
func LoadPublicKeys(paths []string) (map[string]ed25519.PublicKey, error) {
	keys := make(map[string]ed25519.PublicKey, len(paths))
	for _, p := range paths {
		pub, err := LoadPublicKey(p)
		if err != nil {
			return nil, err
		}
		keys[KeyID(pub)] = pub
	}
	return keys, nil
}

func readKeyFile(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("key file: empty path")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if len(data) > maxKeyFileBytes {
		return nil, fmt.Errorf("key file %s: over %d bytes", path, maxKeyFileBytes)
	}
	return data, nil
}

// Manifest is the manifest of a release: its identity and artifact (digest,
// size and the URL agents fetch it from), the digest of spec (what it runs
// with, see SpecDigest), its sequence in the service's signed history,
// signed at signedAt and valid until expiresAt.
func Manifest(rel *v1.Release, spec *v1.ServiceSpec, sequence uint64, signedAt, expiresAt time.Time) *v1.ReleaseManifest {
	m := &v1.ReleaseManifest{
		SpecSha256:     SpecDigest(spec),
		Sequence:       sequence,
		Service:        rel.GetService(),
		Version:        rel.GetVersion(),
		ArtifactSha256: rel.GetArtifact().GetSha256(),
		ArtifactSize:   rel.GetArtifact().GetSize(),
		ArtifactUrl:    rel.GetArtifact().GetUrl(),
		Commit:         rel.GetCommit(),
		SignedAt:       timestamppb.New(signedAt),
		ExpiresAt:      timestamppb.New(expiresAt),
	}
	if ct := rel.GetCommitTime(); ct != nil {
		m.CommitTime = proto.Clone(ct).(*timestamppb.Timestamp)
	}
	return m
}

// Sign serializes m deterministically and signs the bytes with priv.
func Sign(m *v1.ReleaseManifest, priv ed25519.PrivateKey) (*v1.SignedManifest, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("sign manifest: private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	if m == nil {
		return nil, errors.New("sign manifest: no manifest")
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("sign manifest: %w", err)
	}
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("sign manifest: %d bytes, over the limit of %d", len(b), MaxManifestBytes)
	}
	pub, _ := priv.Public().(ed25519.PublicKey)
	return &v1.SignedManifest{Manifest: b, Signature: ed25519.Sign(priv, b), KeyId: KeyID(pub)}, nil
}

// Verify checks the signed manifest of rel: signed by one of the trusted
// keys (by key id), a valid signature over the manifest bytes, a manifest
// that names exactly rel's service, version, artifact sha256, size and URL,
// commit and commit time, not expired at now and not signed more than
// MaxClockSkew after now, with a spec digest and a sequence. It returns the
// manifest, or an *Error naming what failed that matches one of the
// sentinel errors; the times are checked last, so ErrExpired and
// ErrNotYetValid mean that all else verified.
func Verify(rel *v1.Release, trusted map[string]ed25519.PublicKey, now time.Time) (*v1.ReleaseManifest, error) {
	what := "release " + show(rel.GetVersion(), 64)
	sm := rel.GetSigned()
	if sm == nil {
		return nil, fail(ErrUnsigned, "%s: unsigned", what)
	}
	id := sm.GetKeyId()
	pub, ok := trusted[id]
	if !ok || len(pub) != ed25519.PublicKeySize {
		return nil, fail(ErrUnknownKey, "%s: signature by unknown key %s", what, show(id, KeyIDLen*2))
	}
	if n := len(sm.GetSignature()); n != ed25519.SignatureSize {
		return nil, fail(ErrBadSignature, "%s: signature by key %s is %d bytes, want %d", what, id, n, ed25519.SignatureSize)
	}
	if n := len(sm.GetManifest()); n == 0 || n > MaxManifestBytes {
		return nil, fail(ErrMalformed, "%s: signed manifest is %d bytes, want 1 to %d", what, n, MaxManifestBytes)
	}
	if !ed25519.Verify(pub, sm.GetManifest(), sm.GetSignature()) {
		return nil, fail(ErrBadSignature, "%s: signature by key %s does not verify", what, id)
	}
	m := &v1.ReleaseManifest{}
	if err := proto.Unmarshal(sm.GetManifest(), m); err != nil {
		return nil, fail(ErrMalformed, "%s: signed manifest does not decode: %v", what, err)
	}
	for _, c := range []struct {
		field, manifest, release string
	}{
		{"service", m.GetService(), rel.GetService()},
		{"version", m.GetVersion(), rel.GetVersion()},
		{"artifact sha256", m.GetArtifactSha256(), rel.GetArtifact().GetSha256()},
		{"artifact size", strconv.FormatInt(m.GetArtifactSize(), 10), strconv.FormatInt(rel.GetArtifact().GetSize(), 10)},
		{"artifact url", m.GetArtifactUrl(), rel.GetArtifact().GetUrl()},
		{"commit", m.GetCommit(), rel.GetCommit()},
		{"commit time", showTime(m.GetCommitTime()), showTime(rel.GetCommitTime())},
	} {
		if c.manifest != c.release {
			return nil, fail(ErrMismatch, "%s: signed manifest has %s %s, the release %s", what, c.field, show(c.manifest, 80), show(c.release, 80))
		}
	}
	if m.GetSpecSha256() == "" || m.GetSequence() == 0 {
		return nil, fail(ErrIncomplete, "%s: signed manifest has no spec digest or no sequence (signed by an older fleetwave): sign the release again with --spec", what)
	}
	if !isSHA256(m.GetSpecSha256()) {
		return nil, fail(ErrMalformed, "%s: signed manifest has spec sha256 %s, not 64 lowercase hex digits", what, show(m.GetSpecSha256(), 80))
	}
	// Last: ErrExpired and ErrNotYetValid mean everything else verified
	// (ParseManifest then gives the manifest).
	if err := checkValidity(what, "signed manifest", m.GetSignedAt(), m.GetExpiresAt(), now); err != nil {
		return nil, err
	}
	return m, nil
}

// checkValidity checks a signed document's signed_at and expires_at
// against now.
func checkValidity(what, doc string, signedAt, expiresAt *timestamppb.Timestamp, now time.Time) error {
	if signedAt == nil || signedAt.CheckValid() != nil {
		return fail(ErrMalformed, "%s: %s has no valid signed_at", what, doc)
	}
	if expiresAt == nil || expiresAt.CheckValid() != nil {
		return fail(ErrMalformed, "%s: %s has no valid expires_at", what, doc)
	}
	if exp := expiresAt.AsTime(); !now.Before(exp) {
		return fail(ErrExpired, "%s: %s expired at %s (now %s)", what, doc, fmtTime(exp), fmtTime(now))
	}
	if at := signedAt.AsTime(); at.After(now.Add(MaxClockSkew)) {
		return fail(ErrNotYetValid, "%s: %s has signed_at %s, more than %s after now (%s)", what, doc, fmtTime(at), MaxClockSkew, fmtTime(now))
	}
	return nil
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// SpecDigest is the hex sha256 of what an agent runs of a service spec:
// its name and everything that affects hosts by the one rule of package
// specdiff (run: command, env, user, sockets, grace and readiness
// settings; hooks, resources, checks, min_healthy_time, healthy_deadline, analysis;
// and any field added later, unless specdiff declares it coordinator-only),
// in the deterministic protobuf encoding. The selector, rollout policy and
// alerts decide which hosts and how fast, not what runs, and are left out
// (a rollback rollout rewrites its policy). A nil spec digests like an
// empty one.
func SpecDigest(s *v1.ServiceSpec) string {
	part := specdiff.HostSpec(s)
	part.Name = s.GetName()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(part)
	if err != nil {
		// Only invalid UTF-8 in a string fails; no signature can match it.
		b = append([]byte("unencodable: "), err.Error()...)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// CheckSpec checks that spec, which rel is assigned with, is the one whose
// digest was signed (want: the manifest's spec_sha256, or a rollback
// statement's).
func CheckSpec(rel *v1.Release, spec *v1.ServiceSpec, want string) error {
	if got := SpecDigest(spec); got != want {
		return fail(ErrSpecMismatch, "release %s: the assigned spec has sha256 %s, the signed one %s (run, hooks, resources, checks and analysis must be what was signed)",
			show(rel.GetVersion(), 64), got, show(want, 80))
	}
	return nil
}
func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// showTime renders an optional timestamp for comparison and messages.
func showTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "(none)"
	}
	if ts.CheckValid() != nil {
		return fmt.Sprintf("(invalid %d.%09d)", ts.GetSeconds(), ts.GetNanos())
	}
	return ts.AsTime().UTC().Format(time.RFC3339Nano)
}

// show renders a string from the network for a message: as is when short and
// plain, else quoted and clipped to max bytes.
func show(s string, max int) string {
	plain := s != ""
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '"' || r == unicode.ReplacementChar {
			plain = false
			break
		}
	}
	if plain && len(s) <= max {
		return s
	}
	if len(s) > max {
		return strconv.Quote(string(bytes.ToValidUTF8([]byte(s[:max]), nil))) + "..."
	}
	return strconv.Quote(s)
}
