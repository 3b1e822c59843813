package lifecycle

import (
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestRestoreConfigInstallWithoutEpoch: a state written before the
// target's epoch was recorded (TargetEpoch 0) cannot tell which spec the
// process found running runs: it is not adopted but stopped (and the new
// spec's started after), never left running as the wrong spec. With the
// epoch recorded, the very same process is adopted.
func TestRestoreConfigInstallWithoutEpoch(t *testing.T) {
	good, tgt := asg("v5", 1), asg("v5", 2)
	good.Spec.Run.Env = map[string]string{"MODE": "a"}
	tgt.Spec.Run.Env = map[string]string{"MODE": "b"}
	snap := Snapshot{Service: "web", Phase: v1.Phase_PHASE_CHECKING, Generation: 2, Current: tgt, LastGood: good, Target: tgt}
	kinds := func(acts []Action) map[ActionKind]int {
		out := map[ActionKind]int{}
		for _, a := range acts {
			out[a.Kind]++
		}
		return out
	}
	found := []Running{{Version: "v5", Epoch: 2}}
	if _, acts := Restore(snap, found, t0); kinds(acts)[ActAdopt] != 0 || kinds(acts)[ActStop] != 1 {
		t.Fatalf("without a recorded epoch: %v", acts)
	}
	snap.TargetEpoch = 2
	if _, acts := Restore(snap, found, t0); kinds(acts)[ActAdopt] != 1 || kinds(acts)[ActStop] != 0 || kinds(acts)[ActStart] != 0 {
		t.Fatalf("with the target's epoch recorded: %v", acts)
	}
}
