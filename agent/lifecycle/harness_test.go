package lifecycle

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	testMinHealthy = 10 * time.Second
	testDeadline   = 60 * time.Second
)

// asg builds a valid assignment with one check.
func asg(version string, gen int64) *v1.Assignment {
	return asgChecks(version, gen, 1)
}

func asgChecks(version string, gen int64, nChecks int) *v1.Assignment {
	a := &v1.Assignment{
		Service:    "web",
		Generation: gen,
		Release: &v1.Release{Service: "web", Version: version, Artifact: &v1.Artifact{
			Sha256: strings.Repeat("a", 64), Size: 10,
		}},
		Spec: &v1.ServiceSpec{
			Name:            "web",
			Run:             &v1.RunSpec{Command: []string{"./run"}},
			MinHealthyTime:  durationpb.New(testMinHealthy),
			HealthyDeadline: durationpb.New(testDeadline),
		},
	}
	for i := 0; i < nChecks; i++ {
		a.Spec.Checks = append(a.Spec.Checks, &v1.Check{Name: fmt.Sprintf("c%d", i),
			Kind: &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"true"}}}})
	}
	return a
}

// harness drives one Machine the way the agent's run loop does and records
// what it did.
type harness struct {
	t        *testing.T
	m        *Machine
	now      time.Time
	inflight *Action // the long step in flight
	epoch    uint64  // epoch of the last ActStart
	checking bool
	last     []Action // actions of the last step
	all      []Action
	persist  *Snapshot // last persisted snapshot
	reports  []*v1.ServiceReport
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return &harness{t: t, m: New("web"), now: t0}
}

func (h *harness) record(acts []Action) []Action {
	h.t.Helper()
	h.last = acts
	h.all = append(h.all, acts...)
	for i := range acts {
		a := acts[i]
		switch {
		case a.Kind.Long():
			if h.inflight != nil {
				h.t.Fatalf("second long step %v while %v in flight", a, *h.inflight)
			}
			h.inflight = &a
			if a.Kind == ActStart {
				h.epoch = a.Epoch
			}
		case a.Kind == ActBeginChecks:
			h.checking = true
		case a.Kind == ActStopChecks:
			h.checking = false
		case a.Kind == ActPersist:
			h.persist = a.Snapshot
		case a.Kind == ActReport:
			h.reports = append(h.reports, a.Report)
		}
	}
	return acts
}

func (h *harness) step(in Input) []Action {
	h.t.Helper()
	return h.record(h.m.Step(in))
}

func (h *harness) advance(d time.Duration) { h.now = h.now.Add(d) }

func (h *harness) assign(a *v1.Assignment) []Action { h.t.Helper(); return h.step(Assign(a, h.now)) }

// expect asserts the long step in flight.
func (h *harness) expect(k ActionKind, version string) {
	h.t.Helper()
	if h.inflight == nil {
		h.t.Fatalf("want %v %q in flight, none (phase %v, last %v)", k, version, h.m.Phase(), h.last)
	}
	if h.inflight.Kind != k || h.inflight.Version != version {
		h.t.Fatalf("want %v %q in flight, got %v", k, version, *h.inflight)
	}
}

// done completes the step in flight, which must be k.
func (h *harness) done(k ActionKind, version string, err error) []Action {
	h.t.Helper()
	h.expect(k, version)
	seq := h.inflight.Seq
	h.inflight = nil
	return h.step(Done(seq, err, h.now))
}

func (h *harness) checks(ok bool) []Action {
	h.t.Helper()
	return h.step(Checks(h.epoch, h.now, CheckResult{Name: "c0", OK: ok, Detail: "d"}))
}

func (h *harness) phase(want v1.Phase) {
	h.t.Helper()
	if got := h.m.Phase(); got != want {
		h.t.Fatalf("phase %v, want %v (reason %q)", got, want, h.m.Report().Reason)
	}
}

func (h *harness) lastReport() *v1.ServiceReport {
	h.t.Helper()
	if len(h.reports) == 0 {
		h.t.Fatal("no report")
	}
	return h.reports[len(h.reports)-1]
}

// versions asserts current and last good in the machine and the last report.
func (h *harness) versions(current, lastGood string) {
	h.t.Helper()
	r := h.m.Report()
	if r.CurrentVersion != current || r.LastGoodVersion != lastGood {
		h.t.Fatalf("current=%q last good=%q, want %q %q", r.CurrentVersion, r.LastGoodVersion, current, lastGood)
	}
}

func kinds(acts []Action) []ActionKind {
	var ks []ActionKind
	for _, a := range acts {
		ks = append(ks, a.Kind)
	}
	return ks
}

func has(acts []Action, k ActionKind) bool {
	for _, a := range acts {
		if a.Kind == k {
			return true
		}
	}
	return false
}

// install drives a fresh install of a up to the checking phase.
func (h *harness) toChecking(a *v1.Assignment, wasRunning bool) {
	h.t.Helper()
	v := Version(a)
	h.assign(a)
	h.done(ActFetch, v, nil)
	h.done(ActVerify, v, nil)
	h.done(ActStage, v, nil)
	h.done(ActSwitch, v, nil)
	if wasRunning {
		h.done(ActStop, "", nil)
	}
	h.done(ActStart, v, nil)
	h.phase(v1.Phase_PHASE_CHECKING)
}

// toHealthy installs a and makes it healthy.
func (h *harness) toHealthy(a *v1.Assignment, wasRunning bool) {
	h.t.Helper()
	h.toChecking(a, wasRunning)
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_HEALTHY)
}
