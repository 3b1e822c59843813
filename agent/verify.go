package agent

import (
	"crypto/ed25519"
	"errors"
	"fmt"
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
//     sha256, size and URL, commit and commit time, and has not expired (see
//     signing.Verify). The URL is signed so that a coordinator cannot point
//     agents at another address (artifact.go has the redirect policy). A release that fails is fed to the machine as an
//     invalid assignment: the service ends FAILED at that generation with
//     the reason, nothing is fetched or stopped, and the release it runs
//     keeps running.

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

// verifyRelease checks the signature of asg's release against trusted. An
// expired manifest is accepted for a release this host already installed
// (same version and artifact as current or last good): it was verified when
// it was accepted, and expiry forbids new installs, not running or going
// back to what is here. The error reads "release V: <what failed>: refused".
func verifyRelease(asg *v1.Assignment, trusted trustedKeys, installed []*v1.Assignment, now time.Time) error {
	rel := asg.GetRelease()
	if rel != nil && rel.GetService() == "" {
		// The release is for the assigned service (validateAssignment): the
		// manifest must name it.
		rel = proto.Clone(rel).(*v1.Release)
		rel.Service = asg.GetService()
	}
	_, err := signing.Verify(rel, trusted, now)
	if errors.Is(err, signing.ErrExpired) {
		for _, in := range installed {
			if sameRelease(in.GetRelease(), rel) {
				return nil
			}
		}
	}
	if err != nil {
		return fmt.Errorf("%w: refused", err)
	}
	return nil
}

func sameRelease(a, b *v1.Release) bool {
	return a != nil && b != nil && a.GetVersion() == b.GetVersion() &&
		a.GetArtifact().GetSha256() == b.GetArtifact().GetSha256() && a.GetArtifact().GetSize() == b.GetArtifact().GetSize()
}

// refuse makes the trust checks on a valid assignment and reports whether
// it was refused (the caller then does not assign it).
func (a *agent) refuse(s *service, asg *v1.Assignment, now time.Time) bool {
	gen := asg.GetGeneration()
	if gen < s.m.Generation() {
		// The machine refuses it and says so in its reports.
		a.log.Warn().Str("service", s.name).Int64("generation", gen).Str("version", lifecycle.Version(asg)).
			Int64("accepted_generation", s.m.Generation()).Msg("refusing a replayed assignment")
		return false
	}
	if len(a.trusted) == 0 || gen == s.m.Generation() {
		return false // not checked, or the assignment already accepted (the machine repeats its report)
	}
	if err := verifyRelease(asg, a.trusted, []*v1.Assignment{s.m.Current(), s.m.LastGood()}, now); err != nil {
		a.log.Warn().Str("service", s.name).Int64("generation", gen).Str("version", lifecycle.Version(asg)).
			Err(err).Msg("refusing an assignment: its release does not verify")
		a.step(s, lifecycle.Invalid(gen, err.Error(), now))
		return true
	}
	return false
}
