package spec

import (
	"errors"
	"strings"
	"testing"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestZoneAndAlertPolicyValidation(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(r *v1.RolloutPolicy)
		want   string // one complete problem line; "" = valid
	}{
		{"count", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "2" }, ""},
		{"percentage", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "25%" }, ""},
		{"hundred percent", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "100%" }, ""},
		{"zero", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "0" }, `rollout.max_unavailable_per_zone: "0" is not a count in 1..100000`},
		{"count too big", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "100001" }, `rollout.max_unavailable_per_zone: "100001" is not a count in 1..100000`},
		{"zero percent", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "0%" }, `rollout.max_unavailable_per_zone: "0%" is not a percentage in 1%..100%`},
		{"over 100 percent", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "150%" }, `rollout.max_unavailable_per_zone: "150%" is not a percentage in 1%..100%`},
		{"negative", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "-1" }, `rollout.max_unavailable_per_zone: "-1" is not a count ("2") or a percentage ("25%")`},
		{"plus", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "+1" }, `rollout.max_unavailable_per_zone: "+1" is not a count`},
		{"words", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "half" }, `rollout.max_unavailable_per_zone: "half" is not a count`},
		{"bare percent", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = "%" }, `rollout.max_unavailable_per_zone: "%" is not a count`},
		{"space", func(r *v1.RolloutPolicy) { r.MaxUnavailablePerZone = " 2" }, `rollout.max_unavailable_per_zone: " 2" is not a count`},
		{"zone order", func(r *v1.RolloutPolicy) { r.ZoneOrder = ZoneOrderOneAtATime }, ""},
		{"bad zone order", func(r *v1.RolloutPolicy) { r.ZoneOrder = "sequential" }, `rollout.zone_order: "sequential" is not one_at_a_time`},
		{"alerts", func(r *v1.RolloutPolicy) { r.AbortOnAlerts = []string{"HighErrorRate", "job:latency_p99:high"} }, ""},
		{"bad alert name", func(r *v1.RolloutPolicy) { r.AbortOnAlerts = []string{"High Error Rate"} }, `rollout.abort_on_alerts[0]: "High Error Rate" is not an alert name`},
		{"empty alert name", func(r *v1.RolloutPolicy) { r.AbortOnAlerts = []string{"A", ""} }, `rollout.abort_on_alerts[1]: "" is not an alert name`},
		{"alert twice", func(r *v1.RolloutPolicy) { r.AbortOnAlerts = []string{"A", "B", "A"} }, `rollout.abort_on_alerts[2]: "A" is listed twice`},
		{"too many alerts", func(r *v1.RolloutPolicy) {
			for i := range MaxAbortOnAlerts + 1 {
				r.AbortOnAlerts = append(r.AbortOnAlerts, "A"+strings.Repeat("x", i))
			}
		}, `rollout.abort_on_alerts: 33 alert names, more than 32`},
		{"alert name too long", func(r *v1.RolloutPolicy) { r.AbortOnAlerts = []string{strings.Repeat("a", 129)} }, `rollout.abort_on_alerts[0]: "aaaa`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := valid()
			tt.mutate(s.Rollout)
			err := Validate(s)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate succeeded")
			}
			found := false
			for _, l := range strings.Split(err.Error(), "\n") {
				found = found || strings.HasPrefix(l, tt.want)
			}
			if !found {
				t.Errorf("no problem starting with %q in:\n%v", tt.want, err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error is not a *FieldError: %T", err)
			}
		})
	}
}

// A count may be written as a YAML number or a string; other string
// fields still refuse numbers.
func TestParseZoneLimitAsNumber(t *testing.T) {
	for _, in := range []string{"max_unavailable_per_zone: 2", `max_unavailable_per_zone: "2"`} {
		s, err := Parse([]byte("name: web\nrun: {command: [./web]}\nrollout:\n  " + in + "\n  zone_order: one_at_a_time\n"))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := s.GetRollout().GetMaxUnavailablePerZone(); got != "2" {
			t.Errorf("%s: max_unavailable_per_zone = %q, want 2", in, got)
		}
		if err := Validate(s); err != nil {
			t.Errorf("%s: %v", in, err)
		}
	}
	if _, err := Parse([]byte("name: web\nrun: {command: [./web]}\nrollout: {mode: 2}\n")); err == nil || !strings.Contains(err.Error(), "rollout.mode: want a string, got number 2") {
		t.Errorf("mode: 2 parsed: %v", err)
	}
}

func TestZoneLimit(t *testing.T) {
	for _, tt := range []struct {
		s    string
		n    int
		want int
	}{
		{"", 10, 0}, {"2", 10, 2}, {"2", 1, 2}, {"25%", 10, 2}, {"25%", 4, 1}, {"25%", 1, 1}, {"50%", 3, 1}, {"99%", 10, 9}, {"1%", 1000, 10}, {"1%", 199, 1}, {"100%", 7, 7}, {"bad", 7, 0},
	} {
		if got := ZoneLimit(tt.s, tt.n); got != tt.want {
			t.Errorf("ZoneLimit(%q, %d) = %d, want %d", tt.s, tt.n, got, tt.want)
		}
	}
}
