package lifecycle

import (
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

const testWatch = 60 * time.Second

// asgAnalysed is asg with one analysis rule named "errors" and a watch of
// testWatch.
func asgAnalysed(version string, gen int64) *v1.Assignment {
	a := asg(version, gen)
	a.Spec.Analysis = &v1.Analysis{
		Watch: durationpb.New(testWatch),
		Rules: []*v1.AnalysisRule{{Name: "errors", Kind: &v1.AnalysisRule_ErrorRatio{
			ErrorRatio: &v1.ErrorRatioRule{Metric: "http_requests_total", Max: 0.05}}}},
	}
	return a
}

const (
	failReason  = `rule "errors": error ratio 0.200 over 10s (40/200 requests) > max 0.050`
	passReason  = `rule "errors": error ratio 0.000 over 10s (0/200 requests) <= max 0.050`
	inconReason = `rule "errors": inconclusive: 3 requests in 10s, need 20`
)

// analysis feeds one verdict on the process of the last ActStart.
func (h *harness) analysis(v Verdict) []Action {
	h.t.Helper()
	reason := map[Verdict]string{VerdictPass: passReason, VerdictFail: failReason, VerdictInconclusive: inconReason}[v]
	return h.step(Analysis(h.epoch, h.now, v, RuleResult{Rule: "errors", Verdict: v, Reason: reason}))
}

// toHealthyAnalysed installs a, with its checks and its analysis passing.
func (h *harness) toHealthyAnalysed(a *v1.Assignment, wasRunning bool) {
	h.t.Helper()
	h.toChecking(a, wasRunning)
	h.checks(true)
	h.analysis(VerdictPass)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_HEALTHY)
}

// finishRevert carries a revert to v through to REVERTED.
func (h *harness) finishRevert(v string) {
	h.t.Helper()
	h.done(ActStop, "", nil)
	h.done(ActSwitch, v, nil)
	h.done(ActStart, v, nil)
	if _, ok := h.m.AnalysisEpoch(); ok {
		h.t.Fatal("the last good release's re-check is analysed")
	}
	h.analysis(VerdictFail) // ignored: the re-check needs its health checks only
	h.phase(v1.Phase_PHASE_REVERTING)
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_REVERTED)
	if h.m.Watching() || h.checking {
		h.t.Fatal("a reverted release is watched")
	}
}

func reportCheck(r *v1.ServiceReport, name string) *v1.CheckResult {
	for _, c := range r.GetChecks() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func TestAnalysisFailDuringCheckingRevertsAtOnce(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toChecking(asgAnalysed("v2", 2), true)
	if e, ok := h.m.AnalysisEpoch(); !ok || e != h.epoch {
		t.Fatalf("AnalysisEpoch = %d %v, want %d", e, ok, h.epoch)
	}
	h.checks(true)
	h.step(Analysis(h.epoch-1, h.now, VerdictFail)) // an older process: ignored
	h.phase(v1.Phase_PHASE_CHECKING)
	h.advance(time.Second)
	acts := h.analysis(VerdictFail)
	h.phase(v1.Phase_PHASE_REVERTING) // at once, long before the deadline
	if got, want := kinds(acts), []ActionKind{ActStopChecks, ActPersist, ActReport, ActStop}; !reflect.DeepEqual(got, want) {
		t.Fatalf("actions %v, want %v", got, want)
	}
	r := h.lastReport()
	if r.Reason != "v2: "+failReason {
		t.Fatalf("reason %q", r.Reason)
	}
	if c := reportCheck(r, "analysis:errors"); c == nil || c.Ok || c.Detail != failReason {
		t.Fatalf("report checks %v", r.GetChecks())
	}
	h.finishRevert("v1")
	h.versions("v1", "v1")
	if r := h.lastReport(); r.Generation != 2 || r.Reason != "v2: "+failReason {
		t.Fatalf("report %v", r)
	}
}

func TestHealthyNeedsAnalysisPass(t *testing.T) {
	h := newHarness(t)
	h.toChecking(asgAnalysed("v1", 1), false)
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_CHECKING) // no verdict yet
	h.analysis(VerdictInconclusive)
	h.advance(time.Second)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_CHECKING)
	if c := reportCheck(h.lastReport(), "analysis:errors"); c == nil || c.Ok || !strings.Contains(c.Detail, "inconclusive") {
		t.Fatalf("report checks %v", h.lastReport().GetChecks())
	}
	h.analysis(VerdictPass)
	h.phase(v1.Phase_PHASE_HEALTHY)
	if c := reportCheck(h.lastReport(), "analysis:errors"); c == nil || !c.Ok || c.Detail != passReason {
		t.Fatalf("report checks %v", h.lastReport().GetChecks())
	}
	// A Pass alone is not enough: the checks must also have passed long enough.
	h.toChecking(asgAnalysed("v2", 2), true)
	h.analysis(VerdictPass)
	h.checks(true)
	h.phase(v1.Phase_PHASE_CHECKING)
	// The latest verdict counts: a Pass followed by an Inconclusive waits.
	h.analysis(VerdictInconclusive)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_CHECKING)
}

func TestAnalysisInconclusiveUntilDeadlineReverts(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toChecking(asgAnalysed("v2", 2), true)
	h.checks(true)
	for i := 0; i < int(testDeadline/(5*time.Second))-1; i++ {
		h.advance(5 * time.Second)
		h.checks(true)
		h.analysis(VerdictInconclusive)
		h.phase(v1.Phase_PHASE_CHECKING)
	}
	h.advance(5 * time.Second)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_REVERTING)
	want := "v2: analysis inconclusive at the healthy deadline (1m0s): " + inconReason
	if r := h.lastReport().Reason; r != want {
		t.Fatalf("reason %q, want %q", r, want)
	}
	h.finishRevert("v1")
}

func TestAnalysisNoVerdictAtDeadline(t *testing.T) {
	h := newHarness(t)
	h.toChecking(asgAnalysed("v1", 1), false)
	h.checks(true)
	h.advance(testDeadline)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_REVERTING)
	if r := h.lastReport().Reason; !strings.Contains(r, "v1: analysis inconclusive at the healthy deadline (1m0s): no analysis verdict yet") {
		t.Fatalf("reason %q", r)
	}
}

func TestAnalysisInconclusiveFail(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	a := asgAnalysed("v2", 2)
	a.Spec.Analysis.Inconclusive = "fail"
	h.toChecking(a, true)
	h.checks(true)
	h.analysis(VerdictInconclusive) // before the checks passed long enough: not yet judged
	h.phase(v1.Phase_PHASE_CHECKING)
	h.advance(testMinHealthy)
	h.step(Tick(h.now)) // the checks have passed long enough; the verdict is inconclusive: revert at once
	h.phase(v1.Phase_PHASE_REVERTING)
	want := "v2: analysis inconclusive (inconclusive: fail): " + inconReason
	if r := h.lastReport().Reason; r != want {
		t.Fatalf("reason %q, want %q", r, want)
	}
	h.finishRevert("v1")
}

func TestAnalysisFailDuringWatchReverts(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toHealthyAnalysed(asgAnalysed("v2", 2), true)
	h.versions("v2", "v2")
	if !h.m.Watching() || !h.checking {
		t.Fatal("not watching after HEALTHY")
	}
	nReports := len(h.reports)
	for i := 0; i < 5; i++ {
		h.advance(5 * time.Second)
		h.checks(true)
		h.analysis(VerdictInconclusive) // does nothing during the watch
		h.analysis(VerdictPass)
	}
	h.phase(v1.Phase_PHASE_HEALTHY)
	for _, r := range h.reports[nReports:] {
		if r.Phase != v1.Phase_PHASE_HEALTHY || r.Generation != 2 {
			t.Fatalf("report while watching: %v", r)
		}
	}
	h.advance(5 * time.Second) // 35s after HEALTHY, within the 60s watch
	h.analysis(VerdictFail)
	h.phase(v1.Phase_PHASE_REVERTING)
	if r := h.lastReport(); r.Reason != "v2: "+failReason || r.LastGoodVersion != "v1" || r.Generation != 2 {
		t.Fatalf("report %v", r)
	}
	h.expect(ActStop, "")
	h.finishRevert("v1")
	h.versions("v1", "v1")
	if r := h.lastReport(); r.Generation != 2 || r.TargetVersion != "v2" || r.Reason != "v2: "+failReason {
		t.Fatalf("REVERTED report %v", r)
	}
	if h.persist.Phase != v1.Phase_PHASE_REVERTED || Version(h.persist.LastGood) != "v1" || Version(h.persist.Current) != "v1" {
		t.Fatalf("persisted %+v", h.persist)
	}
}

func TestNothingAfterTheWatchWindow(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toHealthyAnalysed(asgAnalysed("v2", 2), true)
	h.advance(testWatch)
	h.checks(true) // the first input at the end of the window ends the watch
	if h.m.Watching() || h.checking {
		t.Fatal("still watching after the window")
	}
	if _, ok := h.m.AnalysisEpoch(); ok {
		t.Fatal("still analysing after the window")
	}
	mark := len(h.all)
	h.analysis(VerdictFail)
	h.step(Checks(h.epoch, h.now, CheckResult{Name: "c0", OK: false, Detail: "down"}))
	for i := 0; i < CrashLoopExits+1; i++ {
		h.advance(time.Second)
		h.step(Exited(h.epoch, h.now))
	}
	h.advance(time.Minute)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_HEALTHY)
	h.versions("v2", "v2")
	if len(h.all) != mark {
		t.Fatalf("acted after the watch window: %v", h.all[mark:])
	}
}

func TestCrashLoopDuringWatchReverts(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 1), false)
	h.toChecking(asg("v2", 2), true) // no analysis rules: watched for DefaultWatch
	h.step(Exited(h.epoch, h.now))   // one exit while checking counts too
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_HEALTHY)
	if !h.m.Watching() {
		t.Fatal("a release without analysis rules is not watched")
	}
	h.advance(time.Minute)
	h.step(Exited(h.epoch, h.now))
	h.phase(v1.Phase_PHASE_HEALTHY)
	h.advance(time.Minute)
	h.step(Exited(h.epoch, h.now))
	h.phase(v1.Phase_PHASE_REVERTING)
	if r := h.lastReport().Reason; !strings.HasPrefix(r, "v2: crash loop after healthy: 3 exits within 2m10s") {
		t.Fatalf("reason %q", r)
	}
	h.finishRevert("v1")
	if r := h.lastReport(); r.Generation != 2 || r.CurrentVersion != "v1" {
		t.Fatalf("report %v", r)
	}
}

func TestChecksFailingDuringWatchRevert(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 1), false)
	a := asg("v2", 2)
	a.Spec.Checks[0].Interval = durationpb.New(2 * time.Second) // fails after 3 × 2s
	if got := WatchFailAfter(a); got != 6*time.Second {
		t.Fatalf("WatchFailAfter = %v", got)
	}
	h.toHealthy(a, true)
	fail := func() { h.step(Checks(h.epoch, h.now, CheckResult{Name: "c0", OK: false, Detail: "status 500"})) }
	// Failing for less than 6s, then passing again: nothing.
	fail()
	h.advance(5 * time.Second)
	fail()
	h.advance(time.Second / 2)
	h.checks(true)
	h.advance(2 * time.Second)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_HEALTHY)
	// Failing continuously for 6s: reverted.
	fail()
	for i := 0; i < 2; i++ {
		h.advance(2 * time.Second)
		fail()
		h.phase(v1.Phase_PHASE_HEALTHY)
	}
	h.advance(2 * time.Second)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_REVERTING)
	if r := h.lastReport().Reason; r != "v2: health checks failing for 6s after healthy: c0: status 500" {
		t.Fatalf("reason %q", r)
	}
	h.finishRevert("v1")
}

func TestWatchSurvivesNewGenerationOfTheSameRelease(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toHealthyAnalysed(asgAnalysed("v2", 2), true)
	if acts := h.assign(asgAnalysed("v2", 3)); has(acts, ActStopChecks) || !h.m.Watching() {
		t.Fatalf("the same release at a newer generation ended the watch: %v", acts)
	}
	h.advance(time.Second)
	h.analysis(VerdictFail)
	h.phase(v1.Phase_PHASE_REVERTING)
	h.finishRevert("v1")
	if r := h.lastReport(); r.Generation != 3 {
		t.Fatalf("report %v", r)
	}
}

func TestNewAssignmentEndsTheWatch(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toHealthyAnalysed(asgAnalysed("v2", 2), true)
	acts := h.assign(asgAnalysed("v3", 3))
	if !has(acts, ActStopChecks) || h.m.Watching() {
		t.Fatalf("watch not ended: %v", acts)
	}
	// v3 fails: the revert goes back to v2, the watched release (now trusted).
	h.done(ActFetch, "v3", nil)
	h.done(ActVerify, "v3", nil)
	h.done(ActStage, "v3", nil)
	h.done(ActSwitch, "v3", nil)
	h.done(ActStop, "", nil)
	h.done(ActStart, "v3", nil)
	h.analysis(VerdictFail)
	h.phase(v1.Phase_PHASE_REVERTING)
	h.finishRevert("v2")
	h.versions("v2", "v2")
}

func TestWatchFailWithoutEarlierReleaseStopsTheService(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.analysis(VerdictFail)
	h.phase(v1.Phase_PHASE_REVERTING)
	h.done(ActStop, "", nil)
	h.done(ActSwitch, "", nil)
	h.phase(v1.Phase_PHASE_FAILED)
	h.versions("", "")
	if r := h.lastReport().Reason; !strings.HasPrefix(r, "v1: "+failReason) || !strings.Contains(r, "no last good release") {
		t.Fatalf("reason %q", r)
	}
}

func TestAnalysisIgnoredWithoutRules(t *testing.T) {
	h := newHarness(t)
	h.toChecking(asg("v1", 1), false)
	if _, ok := h.m.AnalysisEpoch(); ok {
		t.Fatal("analysing a release without rules")
	}
	h.analysis(VerdictFail)
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_HEALTHY)
	h.analysis(VerdictFail)
	h.phase(v1.Phase_PHASE_HEALTHY)
	if c := reportCheck(h.m.Report(), "analysis:errors"); c != nil {
		t.Fatalf("analysis results of a release without rules reported: %v", c)
	}
}

// A revert whose switch back fails must not claim the last good release.
func TestRevertSwitchFailure(t *testing.T) {
	t.Run("link still on the failed release", func(t *testing.T) {
		h := newHarness(t)
		atReverting(h)
		h.done(ActStop, "", nil)
		acts := h.switchDone("v1", errBoom, "v2")
		h.phase(v1.Phase_PHASE_FAILED)
		h.versions("v2", "v1")
		if h.inflight != nil {
			t.Fatalf("started %v after a failed switch back", *h.inflight)
		}
		if !has(acts, ActPersist) || Version(h.persist.Current) != "v2" || h.persist.Phase != v1.Phase_PHASE_FAILED {
			t.Fatalf("persisted %+v", h.persist)
		}
		r := h.lastReport().Reason
		for _, want := range []string{"v2: not healthy within", `switch back to "v1": boom`, "still points at \"v2\""} {
			if !strings.Contains(r, want) {
				t.Fatalf("reason %q lacks %q", r, want)
			}
		}
		h.assign(asg("v3", 3))
		h.expect(ActFetch, "v3")
	})
	t.Run("link unknown", func(t *testing.T) {
		h := newHarness(t)
		atReverting(h)
		h.done(ActStop, "", nil)
		h.done(ActSwitch, "v1", errBoom)
		h.phase(v1.Phase_PHASE_FAILED)
		h.versions("", "v1")
		if r := h.lastReport().Reason; !strings.Contains(r, "unknown") {
			t.Fatalf("reason %q", r)
		}
	})
	t.Run("link already on the last good release", func(t *testing.T) {
		h := newHarness(t)
		atReverting(h)
		h.done(ActStop, "", nil)
		h.switchDone("v1", errBoom, "v1")
		h.expect(ActStart, "v1")
		h.versions("v1", "v1")
	})
}

func TestWatchDefaults(t *testing.T) {
	a := asg("v1", 1)
	if Watch(a) != DefaultWatch || HasAnalysis(a) || FailInconclusive(a) {
		t.Fatalf("defaults: watch %v rules %v", Watch(a), HasAnalysis(a))
	}
	if got := WatchFailAfter(a); got != WatchFailIntervals*DefaultCheckInterval {
		t.Fatalf("WatchFailAfter = %v", got)
	}
	if got := WatchFailAfter(asgChecks("v1", 1, 0)); got != WatchFailIntervals*DefaultCheckInterval {
		t.Fatalf("WatchFailAfter without checks = %v", got)
	}
	if got := Watch(asgAnalysed("v1", 1)); got != testWatch {
		t.Fatalf("Watch = %v", got)
	}
}

func TestWatchSurvivesAgentRestart(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toHealthyAnalysed(asgAnalysed("v2", 2), true)
	until := h.now.Add(testWatch)
	if p := h.persist; !p.WatchUntil.Equal(until) || Version(p.Previous) != "v1" {
		t.Fatalf("persisted watch until %v previous %q, want %v v1", p.WatchUntil, Version(p.Previous), until)
	}
	h.advance(10 * time.Second)
	h.restore()
	h.done(ActSwitch, "v2", nil)
	h.done(ActStart, "v2", nil)
	if _, ok := h.m.AnalysisEpoch(); ok {
		t.Fatal("recovery's re-check is analysed")
	}
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_HEALTHY)
	if !h.m.Watching() || !h.checking {
		t.Fatal("the watch did not resume after the restart")
	}
	if e, ok := h.m.AnalysisEpoch(); !ok || e != h.epoch {
		t.Fatalf("resumed watch not analysed: %d %v", e, ok)
	}
	if p := h.persist; !p.WatchUntil.Equal(until) || Version(p.Previous) != "v1" {
		t.Fatalf("resumed watch persisted until %v previous %q", p.WatchUntil, Version(p.Previous))
	}
	h.advance(time.Second)
	h.analysis(VerdictFail)
	h.phase(v1.Phase_PHASE_REVERTING)
	h.finishRevert("v1")
	h.versions("v1", "v1")
	if r := h.lastReport(); r.Generation != 2 || r.Reason != "v2: "+failReason {
		t.Fatalf("report %v", r)
	}
}

func TestNoWatchAfterRestartPastTheWindow(t *testing.T) {
	h := newHarness(t)
	h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
	h.toHealthyAnalysed(asgAnalysed("v2", 2), true)
	h.advance(testWatch - time.Second)
	h.restore()
	h.done(ActSwitch, "v2", nil)
	h.done(ActStart, "v2", nil)
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_HEALTHY)
	if h.m.Watching() || h.checking || !h.persist.WatchUntil.IsZero() || h.persist.Previous != nil {
		t.Fatalf("watching after the window: %+v", h.persist)
	}
}

// The machine says when the analysis baseline is frozen: just before it
// stops the old release for the install of a release with analysis rules,
// and at no other stop.
func TestFreezeBaseline(t *testing.T) {
	switchDone := func(h *harness, a *v1.Assignment) []Action {
		v := Version(a)
		h.assign(a)
		h.done(ActFetch, v, nil)
		h.done(ActVerify, v, nil)
		h.done(ActStage, v, nil)
		return h.done(ActSwitch, v, nil)
	}
	t.Run("install over a running release", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		acts := switchDone(h, asgAnalysed("v2", 2))
		if got, want := kinds(acts), []ActionKind{ActPersist, ActReport, ActFreezeBaseline, ActStop}; !reflect.DeepEqual(got, want) {
			t.Fatalf("actions %v, want %v", got, want)
		}
		if acts[2].Version != "v2" || Version(acts[2].Assignment) != "v2" {
			t.Fatalf("freeze for %v", acts[2])
		}
	})
	t.Run("first install", func(t *testing.T) {
		h := newHarness(t)
		if acts := switchDone(h, asgAnalysed("v1", 1)); has(acts, ActFreezeBaseline) {
			t.Fatalf("froze a baseline with nothing running: %v", acts)
		}
	})
	t.Run("no analysis rules", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
		if acts := switchDone(h, asg("v2", 2)); has(acts, ActFreezeBaseline) {
			t.Fatalf("froze a baseline for a release without rules: %v", acts)
		}
	})
	t.Run("not at a revert's stop", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthyAnalysed(asgAnalysed("v1", 1), false)
		h.toChecking(asgAnalysed("v2", 2), true)
		if acts := h.analysis(VerdictFail); !has(acts, ActStop) || has(acts, ActFreezeBaseline) {
			t.Fatalf("revert: %v", acts)
		}
	})
}
