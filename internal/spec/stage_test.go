package spec

import (
	"strings"
	"testing"
)

// rollout.stage_ahead is a boolean, off by default; anything else is an
// error naming the field and the value.
func TestStageAheadParses(t *testing.T) {
	base := "name: web\nrun: {command: [./web]}\n"
	s, err := Parse([]byte(base))
	if err != nil || s.GetRollout().GetStageAhead() {
		t.Fatalf("default: stage_ahead %v, err %v; want false", s.GetRollout().GetStageAhead(), err)
	}
	s, err = Parse([]byte(base + "rollout:\n  stage_ahead: true\n"))
	if err != nil || !s.GetRollout().GetStageAhead() {
		t.Fatalf("stage_ahead: true: got %v, err %v", s.GetRollout().GetStageAhead(), err)
	}
	for _, bad := range []string{"3", "\"yes\"", "[true]"} {
		_, err := Parse([]byte(base + "rollout:\n  stage_ahead: " + bad + "\n"))
		if err == nil || !strings.Contains(err.Error(), "rollout.stage_ahead") {
			t.Fatalf("stage_ahead: %s: err %v, want one naming rollout.stage_ahead", bad, err)
		}
	}
}
