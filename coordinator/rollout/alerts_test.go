package rollout

import (
	"strings"
	"testing"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func firing(name string, kv ...string) FiringAlert {
	l := map[string]string{AlertLabelName: name}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return FiringAlert{Labels: l}
}

func TestAlertAbort(t *testing.T) {
	pol := &v1.RolloutPolicy{AbortOnAlerts: []string{"HighErrorRate"}}
	r := New("r1", newSvc(pol, nil), toV, zoned(4), t0)
	if _, ok := AlertAbort(r, []FiringAlert{firing("HighErrorRate")}); !ok {
		t.Fatal("a named alert did not abort a progressing rollout")
	}
	for name, tc := range map[string]struct {
		r      *v1.Rollout
		alerts []FiringAlert
	}{
		"no alerts":         {r, nil},
		"another alert":     {r, []FiringAlert{firing("DiskFull")}},
		"another service":   {r, []FiringAlert{firing("HighErrorRate", "service", "api")}},
		"name is a label":   {r, []FiringAlert{firing("DiskFull", "HighErrorRate", "x")}},
		"ended rollout":     {Fail(r, "x", t0), []FiringAlert{firing("HighErrorRate")}},
		"waiting approval":  {New("r2", newSvc(&v1.RolloutPolicy{AbortOnAlerts: []string{"HighErrorRate"}, Mode: spec.ModeManual}, nil), toV, zoned(4), t0), []FiringAlert{firing("HighErrorRate")}},
		"rollback":          {NewRollback("r3", newSvc(pol, nil), fromV, zoned(4), t0), []FiringAlert{firing("HighErrorRate")}},
		"policy names none": {New("r4", newSvc(nil, nil), toV, zoned(4), t0), []FiringAlert{firing("HighErrorRate")}},
	} {
		if why, ok := AlertAbort(tc.r, tc.alerts); ok {
			t.Errorf("%s: aborted: %s", name, why)
		}
	}
	paused, err := Pause(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := AlertAbort(paused, []FiringAlert{firing("HighErrorRate", "service", "web")}); !ok {
		t.Error("a paused rollout was not aborted")
	}
	// The reason is bounded whatever the alerts carry.
	var many []FiringAlert
	for i := range 100 {
		many = append(many, firing("HighErrorRate", "instance", strings.Repeat("x", 1000)+string(rune('a'+i%26)), "k"+strings.Repeat("y", i), strings.Repeat("v", 500)))
	}
	why, ok := AlertAbort(r, many)
	if !ok || len(why) > 2000 || !strings.Contains(why, " more firing") {
		t.Errorf("AlertAbort = %v, %d bytes: %.300s", ok, len(why), why)
	}
}

// The plan records each host's zone, the group max_unavailable_per_zone
// counts; zone_order one_at_a_time cuts each zone by the waves.
func TestPlanZones(t *testing.T) {
	hosts := append(zoned(6, "a", "b"), Host{ID: "n0"})
	r := New("r1", newSvc(&v1.RolloutPolicy{Waves: []uint32{50, 100}, ZoneOrder: spec.ZoneOrderOneAtATime}, nil), toV, hosts, t0)
	var got []string
	for _, w := range r.GetWaves() {
		var ws []string
		for _, h := range w.GetHosts() {
			ws = append(ws, h.GetHostId()+"@"+h.GetZone())
		}
		got = append(got, strings.Join(ws, " "))
	}
	want := []string{"host-000@a", "host-002@a", "host-004@a", "host-001@b host-003@b", "host-005@b", "n0@"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("plan %q, want %q", got, want)
	}
	for i, w := range r.GetWaves() {
		if w.GetIndex() != uint32(i) || w.GetCanary() != (i == 0) {
			t.Errorf("wave %d: index %d canary %v", i, w.GetIndex(), w.GetCanary())
		}
	}
	if lim := ZoneLimits(New("r2", newSvc(&v1.RolloutPolicy{MaxUnavailablePerZone: "50%"}, nil), toV, hosts, t0)); lim["a"] != 1 || lim["b"] != 1 || lim[""] != 1 { // 50% of 3 rounds down to 1
		t.Errorf("ZoneLimits = %v", lim)
	}
}
