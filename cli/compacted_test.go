package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// An old rollout whose hosts were compacted says so and how many hosts it
// had, in rollout status and in a watch joining it; it never shows zero
// hosts silently.
func TestCompactedRolloutShown(t *testing.T) {
	r := rollout.Compact(step(plan(), func(r *v1.Rollout) {
		r.State = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
		for _, w := range r.Waves {
			w.State = wDone
			for _, h := range w.Hosts {
				h.State = hDone
			}
		}
	}))
	want := []string{
		"rollout web-7 of web: 1.0 → 1.1, 2 waves, 3 hosts",
		"host detail pruned (an old rollout, beyond the newest --keep-rollout-hosts): 3 hosts",
		"wave 0 (canary) done: 1 host (detail pruned)",
		"wave 1 done: 2 hosts (detail pruned)",
		"rollout succeeded",
	}
	if got := DiffRollout(nil, r); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("watch got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var b bytes.Buffer
	if err := printRollout(&b, r); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, w := range []string{"-/1", "-/2", "host detail pruned (an old rollout, beyond the newest --keep-rollout-hosts): 3 hosts"} {
		if !strings.Contains(out, w) {
			t.Errorf("rollout status does not say %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "HOST ") {
		t.Errorf("rollout status shows an empty host table:\n%s", out)
	}
}
