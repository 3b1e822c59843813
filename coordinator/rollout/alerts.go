package rollout

import (
	"fmt"
	"sort"
	"strings"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Alert-based stop (rollout.abort_on_alerts), like CodeDeploy's alarms: an
// alert that Alertmanager reports firing aborts a rollout in progress when
// the rollout's policy names it. The coordinator's receiver decodes
// Alertmanager's webhook and asks AlertAbort for each service's rollout in
// flight; the leader calls it again on the rollout it holds before failing
// it (Fail), so a rollout that ended meanwhile is left alone.

// AlertLabelName is the label that names a Prometheus alert.
const AlertLabelName = "alertname"

// AlertLabelService scopes an alert to one service: an alert carrying it
// aborts only that service's rollout.
const AlertLabelService = "service"

// FiringAlert is one alert reported firing, by its labels (made printable
// and bounded by the receiver that decoded them).
type FiringAlert struct {
	Labels map[string]string
}

// Name is the alert's name (its alertname label).
func (a FiringAlert) Name() string { return a.Labels[AlertLabelName] }

// AlertAbort says whether firing alerts abort r: r progresses (paused or
// not; a rollout waiting for approval moved nothing and an ended one is
// left alone), its policy's abort_on_alerts names an alert's alertname,
// and the alert has no "service" label or one naming r's service. The
// reason names every such alert (sorted, at most five) for the rollout's
// reason, its events and the audit log. A rollback's policy names no alert:
// an alert never stops the way back.
func AlertAbort(r *v1.Rollout, alerts []FiringAlert) (reason string, abort bool) {
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		return "", false
	}
	names := r.GetPolicy().GetAbortOnAlerts()
	if len(names) == 0 {
		return "", false
	}
	var hits []string
	for _, a := range alerts {
		if !contains(names, a.Name()) {
			continue
		}
		if s, ok := a.Labels[AlertLabelService]; ok && s != r.GetService() {
			continue
		}
		if d := describeAlert(a); !contains(hits, d) {
			hits = append(hits, d)
		}
	}
	if len(hits) == 0 {
		return "", false
	}
	sort.Strings(hits)
	return fmt.Sprintf("alert %s firing (rollout.abort_on_alerts)", listed(hits, ", ")), true
}

// describeAlert is "HighErrorRate{instance=h1, severity=page}": its name and
// its other labels, each clipped, so a reason stays bounded.
func describeAlert(a FiringAlert) string {
	keys := make([]string, 0, len(a.Labels))
	for k := range a.Labels {
		if k != AlertLabelName {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var kv []string
	for i, k := range keys {
		if i == maxListed {
			kv = append(kv, fmt.Sprintf("and %d more", len(keys)-maxListed))
			break
		}
		kv = append(kv, clip(k, 64)+"="+clip(a.Labels[k], 64))
	}
	name := clip(a.Name(), 128)
	if len(kv) == 0 {
		return name
	}
	return name + "{" + strings.Join(kv, ", ") + "}"
}

// clip shortens s to at most n bytes, marking the cut, so a reason stays
// bounded. Labels arrive printable: the receiver (coordinator/
// alertmanager.go, firingAlerts) replaces unprintable characters before
// they reach the engine.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
