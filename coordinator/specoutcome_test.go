package coordinator

import (
	"strings"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestSpecOutcomeNamesARolloutThatEndedAlready: a spec whose config
// rollout ended before ApplyService answered (its canary failed at once,
// freezing the service) is answered with that rollout, not with "waits:
// frozen" and none (TestConfigRollout failed so on a loaded machine).
// A spec applied while frozen by an earlier rollout still waits.
func TestSpecOutcomeNamesARolloutThatEndedAlready(t *testing.T) {
	svc := &v1.Service{Spec: &v1.ServiceSpec{Name: "web"}, SpecRevision: 2,
		Status: &v1.ServiceStatus{StableVersion: "v1", StableSpecRevision: 1, Frozen: true, FrozenReason: "canary failed"}}
	failed := &v1.Rollout{Id: "000002", ToVersion: "v1", FromVersion: "v1", SpecRevision: 2, FromSpecRevision: 1, State: v1.RolloutState_ROLLOUT_STATE_FAILED}
	r, note := specOutcome(svc, failed, 2)
	if r != failed || !strings.Contains(note, "rollout 000002 already ended failed") {
		t.Fatalf("spec 2, its rollout failed already: %v, %q; want that rollout", r, note)
	}
	svc.SpecRevision = 3
	if r, note := specOutcome(svc, failed, 3); r != nil || !strings.Contains(note, "spec 3 waits: service web is frozen") {
		t.Fatalf("spec 3 while frozen by spec 2's rollout: %v, %q; want a wait", r, note)
	}
}
