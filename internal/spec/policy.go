package spec

import (
	"fmt"
	"strconv"
	"strings"
)

// Values of a rollout policy's string fields: the one vocabulary used by
// validation, the rollout engine, the coordinator and the CLI. An empty
// field means the default (ModeAuto, OnNewReleaseSupersede).
const (
	// RolloutPolicy.mode: a rollout starts at once (auto) or waits for
	// `fleetwave rollout approve` (manual).
	ModeAuto   = "auto"
	ModeManual = "manual"

	// RolloutPolicy.on_new_release: a release created while a rollout
	// progresses ends it and rolls out from the canary (supersede), or waits
	// for it to end (queue).
	OnNewReleaseSupersede = "supersede"
	OnNewReleaseQueue     = "queue"
)

// ZoneOrderOneAtATime is the value of RolloutPolicy.zone_order that
// finishes (and bakes) one zone before the next starts; the default ("")
// spreads the waves over the zones.
const ZoneOrderOneAtATime = "one_at_a_time"

// MaxAbortOnAlerts bounds rollout.abort_on_alerts.
const MaxAbortOnAlerts = 32

// ParseZoneLimit reads rollout.max_unavailable_per_zone: a count ("2") or a
// percentage ("25%"). It returns the count, or the percentage with pct
// true; an empty value is (0, false, nil): no limit.
func ParseZoneLimit(s string) (n int, pct bool, err error) {
	if s == "" {
		return 0, false, nil
	}
	num, pct := strings.CutSuffix(s, "%")
	v, err := strconv.Atoi(num)
	switch {
	case err != nil || num == "" || strings.TrimSpace(num) != num || num[0] == '+' || num[0] == '-':
		return 0, false, fmt.Errorf("rollout.max_unavailable_per_zone: %q is not a count (\"2\") or a percentage (\"25%%\")", s)
	case pct && (v < 1 || v > 100):
		return 0, false, fmt.Errorf("rollout.max_unavailable_per_zone: %q is not a percentage in 1%%..100%%", s)
	case !pct && (v < 1 || v > MaxZoneLimit):
		return 0, false, fmt.Errorf("rollout.max_unavailable_per_zone: %q is not a count in 1..%d", s, MaxZoneLimit)
	}
	return v, pct, nil
}

// MaxZoneLimit bounds the count of rollout.max_unavailable_per_zone.
const MaxZoneLimit = 100000

// ZoneLimit is the number of hosts of a zone of zoneHosts hosts that may be
// unavailable at once under rollout.max_unavailable_per_zone s (already
// valid); 0 means no limit. A percentage rounds down and is at least 1
// (like Kubernetes' maxUnavailable: never more unavailable than asked).
func ZoneLimit(s string, zoneHosts int) int {
	n, pct, err := ParseZoneLimit(s)
	if err != nil || n == 0 {
		return 0
	}
	if !pct {
		return n
	}
	return max(1, zoneHosts*n/100)
}
