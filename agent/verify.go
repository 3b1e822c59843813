package agent

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/signing"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

// Trust checks on assignments, made in the run loop before an assignment
// reaches its machine (so before anything is fetched):
//
//   - Replay: an assignment with a lower generation than the one the service
//     accepted (persisted in its state file, so across restarts) is refused
//     by the lifecycle machine, which names it in its reports until a newer
//     assignment is accepted; the run loop only logs it. An equal generation
//     is the same assignment.
//   - Signature: with Config.TrustedKeys, the release must carry a manifest
//     signed by one of those keys that names its service, version, artifact
//     sha256, size and URL, commit and commit time, the digest of the spec it
//     is assigned with (run, checks, analysis: what runs), and a sequence,
//     and has not expired (see signing.Verify). The URL is signed so that a
//     coordinator cannot point agents at another address (artifact.go has
//     the redirect policy); the spec so that it cannot change what runs.
//   - Floor (TUF's version numbers): the highest sequence accepted per
//     service is kept in DataDir/trust/floors/ and never goes down; a
//     release below it (a validly signed old release: a downgrade) is
//     refused unless it is installed here or a signed rollback statement
//     (fleetwave rollback --to V --sign KEY) names it.
//
// A release that fails is fed to the machine as an invalid assignment: the
// service ends FAILED at that generation with the reason, nothing is
// fetched or stopped, and the release it runs keeps running. Agents without
// trusted keys check none of this.

// trustedKeys are the release signing keys an agent trusts, by key id.
type trustedKeys = map[string]ed25519.PublicKey

// loadTrustedKeys reads Config.TrustedKeys (nil when none are configured).
func loadTrustedKeys(paths []string) (trustedKeys, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	keys, err := signing.LoadPublicKeys(paths)
	if err != nil {
		return nil, fmt.Errorf("trusted_keys: %w", err)
	}
	return keys, nil
}

// floor is the highest signed release a service accepted on this host: the
// sequence of its manifest and which release it was.
type floor struct {
	Sequence       uint64 `json:"sequence"`
	Version        string `json:"version"`
	ArtifactSHA256 string `json:"artifact_sha256"`
}

// floorStore keeps each service's floor in DataDir/trust/floors/<service>.json,
// read on first use and written (atomically, fsynced) before an assignment
// that raises it is accepted. Only the run loop uses it.
type floorStore struct {
	dir    string
	floors map[string]floor
}

func newFloorStore(dataDir string) *floorStore {
	return &floorStore{dir: floorsDir(dataDir), floors: map[string]floor{}}
}

func floorsDir(dataDir string) string { return filepath.Join(dataDir, "trust", "floors") }

// floorTemp is the temp file raise writes the floor file path through;
// path may be a glob (crashTemps).
func floorTemp(path string) string { return path + ".tmp" }

// maxFloorFileBytes bounds a floor file read from disk.
const maxFloorFileBytes = 4 << 10

// get returns the service's floor (zero: none yet). A file that cannot be
// read or decoded is an error: the caller refuses rather than forget it.
func (fs *floorStore) get(service string) (floor, error) {
	if f, ok := fs.floors[service]; ok {
		return f, nil
	}
	path := filepath.Join(fs.dir, service+".json")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		fs.floors[service] = floor{}
		return floor{}, nil
	}
	if err == nil && len(b) > maxFloorFileBytes {
		err = fmt.Errorf("%d bytes, over %d", len(b), maxFloorFileBytes)
	}
	var f floor
	if err == nil {
		err = json.Unmarshal(b, &f)
	}
	if err != nil {
		return floor{}, fmt.Errorf("release floor %s: %w", path, err)
	}
	fs.floors[service] = f
	return f, nil
}

// raise records f as the service's floor, durably.
func (fs *floorStore) raise(service string, f floor) error {
	if err := os.MkdirAll(fs.dir, 0o755); err != nil {
		return fmt.Errorf("release floor: %w", err)
	}
	b, _ := json.Marshal(f)
	path := filepath.Join(fs.dir, service+".json")
	tmp := floorTemp(path)
	err := func() error {
		w, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		if err == nil {
			err = w.Sync()
		}
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, path)
		}
		if err == nil {
			var d *os.File
			if d, err = os.Open(fs.dir); err == nil {
				err = d.Sync()
				d.Close()
			}
		}
		return err
	}()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("release floor %s: %w", path, err)
	}
	fs.floors[service] = f
	return nil
}

// verifyAssignment checks asg's release and spec against trusted and the
// service's floor fl, and returns the floor to record when it rises
// (raise). In order:
//
//   - The release's signed manifest (signing.Verify). An expired one is
//     accepted for a release installed here (same version and artifact as
//     current or last good): expiry forbids new installs, not running or
//     going back to what is here.
//   - A rollback statement sent with it, if any (signing.VerifyRollback).
//   - The spec: its digest must be the manifest's spec_sha256, or the
//     statement's when it names one (signing.CheckSpec).
//   - The floor: a sequence above it is accepted and raises it; the floor's
//     own release is accepted; anything else only when installed here, or
//     with a statement whose max_floor is at least the floor (the floor is
//     then kept: it never goes down).
//
// The error reads "release V: <what failed>: refused".
func verifyAssignment(asg *v1.Assignment, trusted trustedKeys, installed []*v1.Assignment, fl floor, now time.Time) (next floor, raise bool, err error) {
	rel := asg.GetRelease()
	if rel != nil && rel.GetService() == "" {
		// The release is for the assigned service (validateAssignment): the
		// manifest must name it.
		rel = proto.Clone(rel).(*v1.Release)
		rel.Service = asg.GetService()
	}
	refused := func(err error) (floor, bool, error) { return fl, false, fmt.Errorf("%w: refused", err) }
	isInstalled := false
	for _, in := range installed {
		if sameRelease(in.GetRelease(), rel) {
			isInstalled = true
		}
	}
	m, err := signing.Verify(rel, trusted, now)
	if errors.Is(err, signing.ErrExpired) && isInstalled {
		m, err = signing.ParseManifest(rel), nil // verified but for the time
	}
	if err != nil {
		return refused(err)
	}
	var st *v1.RollbackStatement
	if sr := asg.GetRollback(); sr != nil {
		if st, err = signing.VerifyRollback(sr, rel, trusted, now); err != nil {
			return refused(err)
		}
	}
	want := m.GetSpecSha256()
	if d := st.GetSpecSha256(); d != "" {
		want = d
	}
	if err := signing.CheckSpec(rel, asg.GetSpec(), want); err != nil {
		return refused(err)
	}
	this := floor{Sequence: m.GetSequence(), Version: rel.GetVersion(), ArtifactSHA256: rel.GetArtifact().GetSha256()}
	switch {
	case this.Sequence > fl.Sequence:
		return this, true, nil
	case this == fl, isInstalled:
		return fl, false, nil
	case st != nil && fl.Sequence <= st.GetMaxFloor():
		return fl, false, nil
	case st != nil:
		return refused(fmt.Errorf("release %s: the rollback statement allows going back from a floor of at most %d; this host's floor is %d (release %s): %w",
			rel.GetVersion(), st.GetMaxFloor(), fl.Sequence, fl.Version, signing.ErrBelowFloor))
	default:
		return refused(signing.FloorError(rel, this.Sequence, fl.Sequence, fl.Version))
	}
}

func sameRelease(a, b *v1.Release) bool {
	return a != nil && b != nil && a.GetVersion() == b.GetVersion() &&
		a.GetArtifact().GetSha256() == b.GetArtifact().GetSha256() && a.GetArtifact().GetSize() == b.GetArtifact().GetSize()
}

// refuse makes the trust checks on a valid assignment and reports whether
// it was refused (the caller then does not assign it).
func (a *agent) refuse(s *service, asg *v1.Assignment, now time.Time) bool {
	gen := asg.GetGeneration()
	if s.m.Replays(asg) {
		// The machine refuses it and says so in its reports.
		a.log.Warn().Str("service", s.name).Int64("generation", gen).Str("version", lifecycle.Version(asg)).
			Int64("accepted_generation", s.m.Generation()).Msg("refusing a replayed assignment")
		return false
	}
	if gen < s.m.Generation() && asg.GetReplacesGeneration() == s.m.Generation() {
		// Not a replay: it replaces the accepted generation, one no
		// coordinator of the fleet issued (a compromised one's). (A removed
		// service takes a lower generation too, without saying so.)
		a.log.Warn().Str("service", s.name).Int64("generation", gen).Str("version", lifecycle.Version(asg)).
			Int64("replaced_generation", s.m.Generation()).Msg("an assignment replaces the accepted generation, which no coordinator of the fleet issued")
	}
	// A removed service takes any later release (lifecycle/remove.go):
	// not a repeat, so it is verified whatever its generation.
	removed := s.m.Phase() == v1.Phase_PHASE_REMOVED && !asg.GetRemove()
	if len(a.trusted) == 0 || gen == s.m.Generation() && !removed || asg.GetRemove() {
		return false // not checked, the assignment already accepted (the machine repeats its report), or no release
	}
	if a.floors == nil {
		a.floors = newFloorStore(a.cfg.DataDir)
	}
	fl, err := a.floors.get(s.name)
	if err == nil {
		var next floor
		var raise bool
		next, raise, err = verifyAssignment(asg, a.trusted, []*v1.Assignment{s.m.Current(), s.m.LastGood()}, fl, now)
		if err == nil && raise {
			// Durable before the machine sees the release: a restart must
			// not forget it.
			err = a.floors.raise(s.name, next)
		}
	}
	if err != nil {
		a.log.Warn().Str("service", s.name).Int64("generation", gen).Str("version", lifecycle.Version(asg)).
			Err(err).Msg("refusing an assignment: its release does not verify")
		a.step(s, lifecycle.Invalid(asg, err.Error(), now))
		return true
	}
	return false
}
