package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Rollback statements. An agent with trusted keys keeps, per service, the
// highest release sequence it accepted (its floor) and refuses a release
// below it: a validly signed old release is a downgrade whoever assigns it.
// An operator who wants one back signs a RollbackStatement naming exactly
// that signed release (the sha256 of its manifest bytes), the highest
// sequence it may undo (max_floor) and, optionally, the spec it runs with.

// rollbackContext is signed before a statement's bytes, so that a signature
// over a statement never verifies as one over a manifest (which is signed
// as is, and whose encoding cannot start with this text) and back.
const rollbackContext = "fleetwave rollback statement v1\n"

// DefaultRollbackExpiry is how long a rollback statement is valid unless
// the signer says otherwise: long enough for the rollback rollout, short so
// that the statement cannot be replayed much later.
const DefaultRollbackExpiry = 24 * time.Hour

// ManifestDigest is the hex sha256 of a release's signed manifest bytes
// ("" when it is unsigned): what a rollback statement names.
func ManifestDigest(rel *v1.Release) string {
	b := rel.GetSigned().GetManifest()
	if len(b) == 0 {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ParseManifest decodes a release's signed manifest without verifying it
// (the CLI reads sequences with it); nil when there is none or it does not
// decode.
func ParseManifest(rel *v1.Release) *v1.ReleaseManifest {
	b := rel.GetSigned().GetManifest()
	if len(b) == 0 || len(b) > MaxManifestBytes {
		return nil
	}
	m := &v1.ReleaseManifest{}
	if proto.Unmarshal(b, m) != nil {
		return nil
	}
	return m
}

// Highest returns, of rels, the release with the highest sequence whose
// signature verifies under a trusted key (the first of equals; an expired
// or not yet valid signature counts: its sequence was signed) and that
// sequence; nil and 0 when none does. The CLI signs a service's next
// release one above it and every rollback statement valid up to it: a
// record the coordinator lists (or a deployer stored) with a made-up
// manifest must not count, or it would choose the statement's max_floor
// (a downgrade past every floor) or use the sequences up (an attack
// review).
func Highest(rels []*v1.Release, trusted map[string]ed25519.PublicKey, now time.Time) (*v1.Release, uint64) {
	var verified []*v1.Release
	for _, r := range rels {
		if _, err := Verify(r, trusted, now); err == nil || errors.Is(err, ErrExpired) || errors.Is(err, ErrNotYetValid) {
			verified = append(verified, r)
		}
	}
	return highestClaimed(verified)
}

// HighestClaimed is Highest without the signatures checked, for whoever
// holds no keys (the coordinator keeps that release's record): a made-up
// manifest can displace the true one, which then makes the CLI sign under
// agents' floors, and agents refuse, nothing worse.
func HighestClaimed(rels []*v1.Release) *v1.Release {
	top, _ := highestClaimed(rels)
	return top
}

// Unverified is the release of rels claiming the highest sequence when it
// is above seq (the highest that verifies), and that claim; nil when none
// is. The CLI warns about it: after a key rotation, the old key's releases
// no longer verify under the new key, and agents that accepted them refuse
// a sequence under theirs.
func Unverified(rels []*v1.Release, seq uint64) (*v1.Release, uint64) {
	if top, claimed := highestClaimed(rels); top != nil && claimed > seq {
		return top, claimed
	}
	return nil, 0
}

// highestClaimed is the release whose manifest claims the highest
// sequence (the first of equals) and that claim.
func highestClaimed(rels []*v1.Release) (*v1.Release, uint64) {
	var top *v1.Release
	var seq uint64
	for _, r := range rels {
		if m := ParseManifest(r); m != nil && (top == nil || m.GetSequence() > seq) {
			top, seq = r, m.GetSequence()
		}
	}
	return top, seq
}

// Rollback is the statement that lets agents go back to rel (which must be
// signed): valid on hosts whose floor is at most maxFloor, with the spec
// of digest specSHA256 if not "" (else the one rel's manifest names).
func Rollback(rel *v1.Release, maxFloor uint64, specSHA256 string, signedAt, expiresAt time.Time) *v1.RollbackStatement {
	return &v1.RollbackStatement{
		Service:          rel.GetService(),
		ToVersion:        rel.GetVersion(),
		ToManifestSha256: ManifestDigest(rel),
		MaxFloor:         maxFloor,
		SpecSha256:       specSHA256,
		SignedAt:         timestamppb.New(signedAt),
		ExpiresAt:        timestamppb.New(expiresAt),
	}
}

// SignRollback serializes st deterministically and signs the context prefix
// and the bytes with priv.
func SignRollback(st *v1.RollbackStatement, priv ed25519.PrivateKey) (*v1.SignedRollback, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("sign rollback: private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	if st == nil || st.GetToManifestSha256() == "" {
		return nil, errors.New("sign rollback: no statement, or its release is unsigned")
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("sign rollback: %w", err)
	}
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("sign rollback: %d bytes, over the limit of %d", len(b), MaxManifestBytes)
	}
	pub, _ := priv.Public().(ed25519.PublicKey)
	return &v1.SignedRollback{Statement: b, Signature: ed25519.Sign(priv, append([]byte(rollbackContext), b...)), KeyId: KeyID(pub)}, nil
}

// ParseRollback decodes a signed rollback statement without verifying the
// signature (the coordinator, which has no trusted keys, checks with it
// that a statement is for the rollback it is sent with); it checks sizes.
func ParseRollback(sr *v1.SignedRollback) (*v1.RollbackStatement, error) {
	if n := len(sr.GetStatement()); n == 0 || n > MaxManifestBytes {
		return nil, fail(ErrMalformed, "rollback statement is %d bytes, want 1 to %d", n, MaxManifestBytes)
	}
	if n := len(sr.GetSignature()); n != ed25519.SignatureSize {
		return nil, fail(ErrBadSignature, "rollback statement signature is %d bytes, want %d", n, ed25519.SignatureSize)
	}
	if n := len(sr.GetKeyId()); n != KeyIDLen {
		return nil, fail(ErrUnknownKey, "rollback statement key id is %d characters, want %d", n, KeyIDLen)
	}
	st := &v1.RollbackStatement{}
	if err := proto.Unmarshal(sr.GetStatement(), st); err != nil {
		return nil, fail(ErrMalformed, "rollback statement does not decode: %v", err)
	}
	return st, nil
}

// VerifyRollback checks a signed rollback statement for rel: signed by a
// trusted key over the context prefix and its bytes, naming rel's service,
// version and signed manifest, valid at now. It does not check max_floor
// against the host's floor: the caller does.
func VerifyRollback(sr *v1.SignedRollback, rel *v1.Release, trusted map[string]ed25519.PublicKey, now time.Time) (*v1.RollbackStatement, error) {
	what := "rollback to " + show(rel.GetVersion(), 64)
	if sr == nil {
		return nil, fail(ErrUnsigned, "%s: no rollback statement", what)
	}
	id := sr.GetKeyId()
	pub, ok := trusted[id]
	if !ok || len(pub) != ed25519.PublicKeySize {
		return nil, fail(ErrUnknownKey, "%s: statement signed by unknown key %s", what, show(id, KeyIDLen*2))
	}
	if n := len(sr.GetSignature()); n != ed25519.SignatureSize {
		return nil, fail(ErrBadSignature, "%s: statement signature by key %s is %d bytes, want %d", what, id, n, ed25519.SignatureSize)
	}
	if n := len(sr.GetStatement()); n == 0 || n > MaxManifestBytes {
		return nil, fail(ErrMalformed, "%s: statement is %d bytes, want 1 to %d", what, n, MaxManifestBytes)
	}
	if !ed25519.Verify(pub, append([]byte(rollbackContext), sr.GetStatement()...), sr.GetSignature()) {
		return nil, fail(ErrBadSignature, "%s: statement signature by key %s does not verify", what, id)
	}
	st := &v1.RollbackStatement{}
	if err := proto.Unmarshal(sr.GetStatement(), st); err != nil {
		return nil, fail(ErrMalformed, "%s: statement does not decode: %v", what, err)
	}
	for _, c := range []struct{ field, statement, release string }{
		{"service", st.GetService(), rel.GetService()},
		{"version", st.GetToVersion(), rel.GetVersion()},
		{"signed manifest sha256", st.GetToManifestSha256(), ManifestDigest(rel)},
	} {
		if c.statement != c.release {
			return nil, fail(ErrMismatch, "%s: statement names %s %s, the release %s", what, c.field, show(c.statement, 80), show(c.release, 80))
		}
	}
	if d := st.GetSpecSha256(); d != "" && !isSHA256(d) {
		return nil, fail(ErrMalformed, "%s: statement has spec sha256 %s, not 64 lowercase hex digits", what, show(d, 80))
	}
	if st.GetMaxFloor() == 0 {
		return nil, fail(ErrMalformed, "%s: statement has no max_floor", what)
	}
	if err := checkValidity(what, "rollback statement", st.GetSignedAt(), st.GetExpiresAt(), now); err != nil {
		return nil, err
	}
	return st, nil
}

// FloorError says why a release at or below an agent's floor is refused:
// its sequence seq is below the floor, or equal to it but another release
// (floorVersion) holds it.
func FloorError(rel *v1.Release, seq, floor uint64, floorVersion string) error {
	where := "below this host's floor " + strconv.FormatUint(floor, 10) + " (release " + show(floorVersion, 64) + ")"
	if seq == floor {
		where = "this host's floor, held by release " + show(floorVersion, 64)
	}
	return fail(ErrBelowFloor, "release %s: signed sequence %d is %s for the service: going back needs a signed rollback statement (fleetwave rollback %s --to %s --sign KEY)",
		show(rel.GetVersion(), 64), seq, where, show(rel.GetService(), 64), show(rel.GetVersion(), 64))
}
