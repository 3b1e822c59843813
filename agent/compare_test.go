package agent

import (
	"testing"

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestReporterCarriesMetrics: a metric summary is sent at once with the
// service's latest report, every later report of the service carries it
// (the machine's report itself is not changed), and clearing it sends
// nothing.
func TestReporterCarriesMetrics(t *testing.T) {
	r := newReporter(spec.MaxServicesPerHost)
	m := &v1.MetricSummary{Version: "v1"}
	r.setMetrics("web", m) // no report yet: nothing to send
	if got := r.take(); len(got) != 0 {
		t.Fatalf("sent %v before any report", got)
	}
	rep := &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY}
	r.put(rep)
	got := r.take()
	if len(got) != 1 || got[0].GetMetrics() != m || rep.GetMetrics() != nil {
		t.Fatalf("report %v (machine's %v), want it with the summary", got, rep)
	}
	m2 := &v1.MetricSummary{Version: "v2"}
	r.setMetrics("web", m2)
	if got := r.take(); len(got) != 1 || got[0].GetMetrics() != m2 || got[0].GetPhase() != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("after a new summary: %v", got)
	}
	r.setMetrics("web", nil)
	if got := r.take(); len(got) != 0 {
		t.Fatalf("clearing sent %v", got)
	}
	if h := r.hello(Config{HostID: "h1"}); len(h.Services) != 1 || h.Services[0].GetMetrics() != nil {
		t.Fatalf("hello after clearing: %v", h.Services)
	}
}
