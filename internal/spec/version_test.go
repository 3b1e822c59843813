package spec

import (
	"strings"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestParseReleaseVersion(t *testing.T) {
	good := map[string]ReleaseVersion{
		"v0.1.0":           {Minor: 1},
		"v1.2.3":           {Major: 1, Minor: 2, Patch: 3},
		"v10.20.30-rc.1":   {Major: 10, Minor: 20, Patch: 30, Pre: "rc.1"},
		"v1.0.0+abc.01":    {Major: 1},
		"v1.0.0-beta+exp1": {Major: 1, Pre: "beta"},
	}
	for s, want := range good {
		if v, ok := ParseReleaseVersion(s); !ok || v != want {
			t.Errorf("ParseReleaseVersion(%q) = %+v, %v; want %+v", s, v, ok, want)
		}
	}
	for _, s := range []string{"", "dev", "test", "1.2.3", "v1.2", "v1.2.3.4", "v01.2.3", "v1.2.3-", "v1.2.3-rc..1",
		"v1.2.3-01", "v1.2.3+", "v1.2.3-rc_1", "v-1.2.3", "v1.2.x", "v99999999999999999999.0.0", "V1.2.3"} {
		if v, ok := ParseReleaseVersion(s); ok {
			t.Errorf("ParseReleaseVersion(%q) = %+v, want not a release version", s, v)
		}
	}
}

func TestReleaseVersionCompare(t *testing.T) {
	// Each is older than the next (semantic versioning's own example order).
	order := []string{"v0.9.9", "v0.10.0", "v1.0.0-alpha", "v1.0.0-alpha.1", "v1.0.0-alpha.beta", "v1.0.0-beta",
		"v1.0.0-beta.2", "v1.0.0-beta.11", "v1.0.0-rc.1", "v1.0.0", "v1.0.1", "v1.1.0", "v2.0.0"}
	for i, a := range order {
		for j, b := range order {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := MustParseReleaseVersion(a).Compare(MustParseReleaseVersion(b)); got != want {
				t.Errorf("%s vs %s: %d, want %d", a, b, got, want)
			}
		}
	}
	if c := MustParseReleaseVersion("v1.0.0+a").Compare(MustParseReleaseVersion("v1.0.0+b")); c != 0 {
		t.Errorf("build suffixes compared: %d", c)
	}
	if s := MustParseReleaseVersion("v1.2.3-rc.1+x").String(); s != "v1.2.3-rc.1" {
		t.Errorf("String: %q", s)
	}
}

func TestAgentServiceReserved(t *testing.T) {
	s := &v1.ServiceSpec{Name: AgentService, Run: &v1.RunSpec{Command: []string{"./app"}}}
	err := Validate(s)
	if err == nil || !strings.Contains(err.Error(), `name: "fleetwave-agent" is reserved for agent upgrades`) {
		t.Fatalf("Validate: %v", err)
	}
	if err := ValidateRolloutPolicy(&v1.RolloutPolicy{Waves: []uint32{50, 40}}); err == nil || !strings.Contains(err.Error(), "rollout.waves[1]: 40") {
		t.Fatalf("ValidateRolloutPolicy: %v", err)
	}
	if err := ValidateRolloutPolicy(&v1.RolloutPolicy{Canary: 1, Waves: []uint32{50, 100}}); err != nil {
		t.Fatalf("ValidateRolloutPolicy: %v", err)
	}
}
