package lifecycle

import (
	"fmt"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestDecideAhead(t *testing.T) {
	rel := func(v, sha string) *v1.Release {
		return &v1.Release{Version: v, Artifact: &v1.Artifact{Sha256: sha}}
	}
	v2, v3 := rel("2.0.0", "bb"), rel("3.0.0", "cc")
	for _, c := range []struct {
		name     string
		held     Ahead
		stage    *v1.Release
		assigned string
		inUse    []string
		want     string
	}{
		{"nothing held, nothing to stage", Ahead{}, nil, "1.0.0", nil, "{false false  <nil>}"},
		{"a stage starts", Ahead{}, v2, "1.0.0", nil, "{false false  2.0.0}"},
		{"the same stage again: nothing", Ahead{Version: "2.0.0", SHA256: "bb"}, v2, "1.0.0", nil, "{false false  <nil>}"},
		{"in flight, the same release from other sources (only the assignment's sources changed): nothing, the fetch goes on", Ahead{Version: "2.0.0", SHA256: "bb"}, rel("2.0.0", "bb"), "1.0.0", []string{"1.0.0"}, "{false false  <nil>}"},
		{"staged, the same stage: nothing", Ahead{Version: "2.0.0", SHA256: "bb", Ready: true}, v2, "1.0.0", nil, "{false false  <nil>}"},
		{"a stage of the assigned release is the install's", Ahead{}, v2, "2.0.0", nil, "{false false  <nil>}"},
		{"the wave comes while staging: handoff, no cancel", Ahead{Version: "2.0.0", SHA256: "bb"}, nil, "2.0.0", nil, "{true false  <nil>}"},
		{"the wave comes once staged: handoff", Ahead{Version: "2.0.0", SHA256: "bb", Ready: true}, nil, "2.0.0", nil, "{true false  <nil>}"},
		{"a new release while staging: cancel, drop, start", Ahead{Version: "2.0.0", SHA256: "bb"}, v3, "1.0.0", nil, "{false true 2.0.0 3.0.0}"},
		{"a new release once staged: drop, start", Ahead{Version: "2.0.0", SHA256: "bb", Ready: true}, v3, "1.0.0", nil, "{false false 2.0.0 3.0.0}"},
		{"stage unset: drop", Ahead{Version: "2.0.0", SHA256: "bb", Ready: true}, nil, "1.0.0", nil, "{false false 2.0.0 <nil>}"},
		{"stage unset, the release in use: kept", Ahead{Version: "2.0.0", SHA256: "bb", Ready: true}, nil, "1.0.0", []string{"1.0.0", "2.0.0"}, "{false false  <nil>}"},
		{"same version, another artifact: restage", Ahead{Version: "2.0.0", SHA256: "aa", Ready: true}, v2, "1.0.0", nil, "{false false 2.0.0 2.0.0}"},
	} {
		st := DecideAhead(c.held, c.stage, c.assigned, c.inUse)
		got := fmt.Sprintf("{%v %v %s %s}", st.Handoff, st.Cancel, st.Drop, func() string {
			if st.Start == nil {
				return "<nil>"
			}
			return st.Start.GetVersion()
		}())
		if got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, got, c.want)
		}
	}
}
