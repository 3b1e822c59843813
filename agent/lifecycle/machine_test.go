package lifecycle

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

var errBoom = errors.New("boom")

// Setups that bring a harness into a given state.
func atIdle(h *harness) {}

func atFetching(h *harness) { h.assign(asg("v1", 1)) }

func atVerifying(h *harness) { atFetching(h); h.done(ActFetch, "v1", nil) }

func atStaging(h *harness) { atVerifying(h); h.done(ActVerify, "v1", nil) }

func atSwitching(h *harness) { atStaging(h); h.done(ActStage, "v1", nil) }

func atStarting(h *harness) { atSwitching(h); h.done(ActSwitch, "v1", nil) }

func atChecking(h *harness) { h.toChecking(asg("v1", 1), false) }

func atHealthy(h *harness) { h.toHealthy(asg("v1", 1), false) }

// v1 healthy, v2 switched to and stopping v1.
func atStoppingOld(h *harness) {
	atHealthy(h)
	h.assign(asg("v2", 2))
	h.done(ActFetch, "v2", nil)
	h.done(ActVerify, "v2", nil)
	h.done(ActStage, "v2", nil)
	h.done(ActSwitch, "v2", nil)
}

// v1 healthy, v2 being checked.
func atCheckingV2(h *harness) {
	atHealthy(h)
	h.toChecking(asg("v2", 2), true)
}

// v1 healthy, v2 failed its checks; reverting (stopping v2).
func atReverting(h *harness) {
	atCheckingV2(h)
	h.advance(testDeadline)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_REVERTING)
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(*harness)
		input     func(*harness) []Action
		wantPhase v1.Phase
		want      []ActionKind
		check     func(*testing.T, *harness)
	}{
		{"idle/assign", atIdle, func(h *harness) []Action { return h.assign(asg("v1", 1)) },
			v1.Phase_PHASE_FETCHING, []ActionKind{ActPersist, ActReport, ActFetch}, nil},
		{"fetching/ok", atFetching, func(h *harness) []Action { return h.done(ActFetch, "v1", nil) },
			v1.Phase_PHASE_VERIFYING, []ActionKind{ActPersist, ActReport, ActVerify}, nil},
		{"fetching/err", atFetching, func(h *harness) []Action { return h.done(ActFetch, "v1", errBoom) },
			v1.Phase_PHASE_FAILED, []ActionKind{ActPersist, ActReport}, func(t *testing.T, h *harness) {
				if r := h.lastReport().Reason; !strings.Contains(r, "fetch v1: boom") {
					t.Errorf("reason %q", r)
				}
			}},
		{"verifying/ok", atVerifying, func(h *harness) []Action { return h.done(ActVerify, "v1", nil) },
			v1.Phase_PHASE_STAGING, []ActionKind{ActPersist, ActReport, ActStage}, nil},
		{"verifying/err", atVerifying, func(h *harness) []Action { return h.done(ActVerify, "v1", errBoom) },
			v1.Phase_PHASE_FAILED, []ActionKind{ActPersist, ActReport}, nil},
		{"staging/ok", atStaging, func(h *harness) []Action { return h.done(ActStage, "v1", nil) },
			v1.Phase_PHASE_SWITCHING, []ActionKind{ActPersist, ActReport, ActSwitch}, nil},
		{"staging/err", atStaging, func(h *harness) []Action { return h.done(ActStage, "v1", errBoom) },
			v1.Phase_PHASE_FAILED, []ActionKind{ActPersist, ActReport}, nil},
		{"switching/ok nothing running", atSwitching, func(h *harness) []Action { return h.done(ActSwitch, "v1", nil) },
			v1.Phase_PHASE_STARTING, []ActionKind{ActPersist, ActReport, ActStart}, func(t *testing.T, h *harness) {
				h.versions("v1", "")
			}},
		{"switching/ok old running", func(h *harness) {
			atHealthy(h)
			h.assign(asg("v2", 2))
			h.done(ActFetch, "v2", nil)
			h.done(ActVerify, "v2", nil)
			h.done(ActStage, "v2", nil)
		}, func(h *harness) []Action { return h.done(ActSwitch, "v2", nil) },
			v1.Phase_PHASE_STARTING, []ActionKind{ActPersist, ActReport, ActStop}, nil},
		{"switching/err", atSwitching, func(h *harness) []Action { return h.done(ActSwitch, "v1", errBoom) },
			v1.Phase_PHASE_FAILED, []ActionKind{ActPersist, ActReport}, func(t *testing.T, h *harness) {
				h.versions("", "")
			}},
		{"starting/stop done", atStoppingOld, func(h *harness) []Action { return h.done(ActStop, "", nil) },
			v1.Phase_PHASE_STARTING, []ActionKind{ActStart}, nil},
		{"starting/stop err goes on", atStoppingOld, func(h *harness) []Action { return h.done(ActStop, "", errBoom) },
			v1.Phase_PHASE_STARTING, []ActionKind{ActStart}, nil},
		{"starting/start ok", atStarting, func(h *harness) []Action { return h.done(ActStart, "v1", nil) },
			v1.Phase_PHASE_CHECKING, []ActionKind{ActPersist, ActBeginChecks, ActReport}, nil},
		{"starting/start err no last good", atStarting, func(h *harness) []Action { return h.done(ActStart, "v1", errBoom) },
			v1.Phase_PHASE_REVERTING, []ActionKind{ActPersist, ActReport, ActSwitch}, func(t *testing.T, h *harness) {
				h.expect(ActSwitch, "")
			}},
		{"starting/start err with last good", func(h *harness) {
			atStoppingOld(h)
			h.done(ActStop, "", nil)
		}, func(h *harness) []Action { return h.done(ActStart, "v2", errBoom) },
			v1.Phase_PHASE_REVERTING, []ActionKind{ActPersist, ActReport, ActSwitch}, func(t *testing.T, h *harness) {
				h.expect(ActSwitch, "v1")
			}},
		{"checking/pass not yet long enough", atChecking, func(h *harness) []Action { return h.checks(true) },
			v1.Phase_PHASE_CHECKING, []ActionKind{ActReport}, nil},
		{"checking/pass long enough", func(h *harness) { atChecking(h); h.checks(true); h.advance(testMinHealthy) },
			func(h *harness) []Action { return h.step(Tick(h.now)) },
			v1.Phase_PHASE_HEALTHY, []ActionKind{ActPersist, ActReport}, func(t *testing.T, h *harness) {
				h.versions("v1", "v1")
				if !h.checking || !h.m.Watching() {
					t.Error("checks stopped at HEALTHY: the watch must keep them running")
				}
			}},
		{"checking/failure resets window", func(h *harness) {
			atChecking(h)
			h.checks(true)
			h.advance(testMinHealthy - time.Second)
			h.checks(false)
			h.advance(2 * time.Second)
		}, func(h *harness) []Action { return h.checks(true) },
			v1.Phase_PHASE_CHECKING, []ActionKind{ActReport}, nil},
		{"checking/deadline", func(h *harness) { atCheckingV2(h); h.advance(testDeadline) },
			func(h *harness) []Action { return h.step(Tick(h.now)) },
			v1.Phase_PHASE_REVERTING, []ActionKind{ActStopChecks, ActPersist, ActReport, ActStop}, func(t *testing.T, h *harness) {
				if r := h.lastReport().Reason; !strings.Contains(r, "v2: not healthy within 1m0s") {
					t.Errorf("reason %q", r)
				}
			}},
		{"checking/crash loop", func(h *harness) {
			atCheckingV2(h)
			h.step(Exited(h.epoch, h.now))
			h.step(Exited(h.epoch, h.now))
		}, func(h *harness) []Action { return h.step(Exited(h.epoch, h.now)) },
			v1.Phase_PHASE_REVERTING, []ActionKind{ActStopChecks, ActPersist, ActReport, ActStop}, func(t *testing.T, h *harness) {
				if r := h.lastReport().Reason; !strings.Contains(r, "crash loop: 3 exits") {
					t.Errorf("reason %q", r)
				}
			}},
		{"checking/stale epoch ignored", atCheckingV2, func(h *harness) []Action {
			return h.step(Checks(h.epoch-1, h.now, CheckResult{Name: "c0", OK: true}))
		}, v1.Phase_PHASE_CHECKING, nil, nil},
		{"checking/wrong seq ignored", atCheckingV2, func(h *harness) []Action { return h.step(Done(999, nil, h.now)) },
			v1.Phase_PHASE_CHECKING, nil, nil},
		{"reverting/stop done", atReverting, func(h *harness) []Action { return h.done(ActStop, "", nil) },
			v1.Phase_PHASE_REVERTING, []ActionKind{ActSwitch}, func(t *testing.T, h *harness) { h.expect(ActSwitch, "v1") }},
		{"reverting/switch done", func(h *harness) { atReverting(h); h.done(ActStop, "", nil) },
			func(h *harness) []Action { return h.done(ActSwitch, "v1", nil) },
			v1.Phase_PHASE_REVERTING, []ActionKind{ActPersist, ActReport, ActStart}, func(t *testing.T, h *harness) {
				h.versions("v1", "v1")
			}},
		{"reverting/start done", func(h *harness) { atReverting(h); h.done(ActStop, "", nil); h.done(ActSwitch, "v1", nil) },
			func(h *harness) []Action { return h.done(ActStart, "v1", nil) },
			v1.Phase_PHASE_REVERTING, []ActionKind{ActBeginChecks, ActReport}, nil},
		{"reverting/checks pass", func(h *harness) {
			atReverting(h)
			h.done(ActStop, "", nil)
			h.done(ActSwitch, "v1", nil)
			h.done(ActStart, "v1", nil)
			h.checks(true)
			h.advance(testMinHealthy)
		}, func(h *harness) []Action { return h.checks(true) },
			v1.Phase_PHASE_REVERTED, []ActionKind{ActStopChecks, ActPersist, ActReport}, func(t *testing.T, h *harness) {
				h.versions("v1", "v1")
				if r := h.lastReport(); r.TargetVersion != "v2" || r.Generation != 2 {
					t.Errorf("report %v", r)
				}
			}},
		{"reverting/last good fails too", func(h *harness) {
			atReverting(h)
			h.done(ActStop, "", nil)
			h.done(ActSwitch, "v1", nil)
			h.done(ActStart, "v1", nil)
			h.advance(testDeadline)
		}, func(h *harness) []Action { return h.step(Tick(h.now)) },
			v1.Phase_PHASE_FAILED, []ActionKind{ActStopChecks, ActPersist, ActReport}, func(t *testing.T, h *harness) {
				h.versions("v1", "v1")
				if r := h.lastReport().Reason; !strings.Contains(r, "last good v1 failed too") {
					t.Errorf("reason %q", r)
				}
			}},
		{"healthy/same version newer generation", atHealthy, func(h *harness) []Action { return h.assign(asg("v1", 5)) },
			v1.Phase_PHASE_HEALTHY, []ActionKind{ActPersist, ActReport}, func(t *testing.T, h *harness) {
				if g := h.lastReport().Generation; g != 5 {
					t.Errorf("generation %d", g)
				}
			}},
		{"healthy/repeat", atHealthy, func(h *harness) []Action { return h.assign(asg("v1", 1)) },
			v1.Phase_PHASE_HEALTHY, []ActionKind{ActReport}, nil},
		{"healthy/stale refused", func(h *harness) { atHealthy(h); h.assign(asg("v1", 4)) },
			func(h *harness) []Action { return h.assign(asg("v9", 3)) },
			v1.Phase_PHASE_HEALTHY, []ActionKind{ActReport}, func(t *testing.T, h *harness) {
				if r := h.lastReport(); r.Generation != 4 || r.CurrentVersion != "v1" || !strings.Contains(r.Reason, "generation 3 (release v9) is older") {
					t.Errorf("report %v", r)
				}
			}},
		{"healthy/invalid", atHealthy, func(h *harness) []Action {
			return h.step(Invalid(2, `release.version: invalid version "../x"`, h.now))
		}, v1.Phase_PHASE_FAILED, []ActionKind{ActStopChecks, ActPersist, ActReport}, func(t *testing.T, h *harness) {
			r := h.lastReport()
			if r.Generation != 2 || !strings.Contains(r.Reason, "release.version") {
				t.Errorf("report %v", r)
			}
			h.versions("v1", "v1")
		}},
		{"healthy/new version ends the watch", atHealthy, func(h *harness) []Action { return h.assign(asg("v2", 2)) },
			v1.Phase_PHASE_FETCHING, []ActionKind{ActStopChecks, ActPersist, ActReport, ActFetch}, nil},
		{"healthy/new version after the watch", func(h *harness) { atHealthy(h); h.advance(DefaultWatch); h.step(Tick(h.now)) },
			func(h *harness) []Action { return h.assign(asg("v2", 2)) },
			v1.Phase_PHASE_FETCHING, []ActionKind{ActPersist, ActReport, ActFetch}, nil},
		{"healthy/watch ends", func(h *harness) { atHealthy(h); h.advance(DefaultWatch - time.Millisecond); h.step(Tick(h.now)) },
			func(h *harness) []Action { h.advance(time.Millisecond); return h.step(Tick(h.now)) },
			v1.Phase_PHASE_HEALTHY, []ActionKind{ActStopChecks, ActPersist}, func(t *testing.T, h *harness) {
				if h.m.Watching() || h.checking {
					t.Error("still watching after the watch window")
				}
				if !h.persist.WatchUntil.IsZero() {
					t.Errorf("persisted a watch after it ended: %+v", h.persist)
				}
			}},
		{"healthy/exit ignored", atHealthy, func(h *harness) []Action { return h.step(Exited(h.epoch, h.now)) },
			v1.Phase_PHASE_HEALTHY, nil, nil},
		{"failed/assign current healthy version", func(h *harness) {
			atHealthy(h)
			h.assign(asg("v2", 2))
			h.done(ActFetch, "v2", errBoom)
		}, func(h *harness) []Action { return h.assign(asg("v1", 3)) },
			v1.Phase_PHASE_HEALTHY, []ActionKind{ActPersist, ActReport}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			tt.setup(h)
			got := kinds(tt.input(h))
			h.phase(tt.wantPhase)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("actions %v, want %v", got, tt.want)
			}
			if tt.check != nil {
				tt.check(t, h)
			}
		})
	}
}

func TestHappyPath(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 1), false)
	h.versions("v1", "v1")
	h.toHealthy(asg("v2", 2), true)
	h.versions("v2", "v2")
	r := h.lastReport()
	if r.Generation != 2 || r.Phase != v1.Phase_PHASE_HEALTHY || r.TargetVersion != "v2" {
		t.Fatalf("report %v", r)
	}
	if h.persist == nil || h.persist.Phase != v1.Phase_PHASE_HEALTHY || Version(h.persist.LastGood) != "v2" {
		t.Fatalf("persisted %+v", h.persist)
	}
}

func TestVerifyFailKeepsOldRunning(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 1), false)
	mark := len(h.all)
	h.assign(asg("v2", 2))
	h.done(ActFetch, "v2", nil)
	h.done(ActVerify, "v2", errors.New("sha256 mismatch"))
	h.phase(v1.Phase_PHASE_FAILED)
	h.versions("v1", "v1")
	for _, a := range h.all[mark:] {
		if a.Kind == ActStop || a.Kind == ActSwitch || a.Kind == ActStart {
			t.Fatalf("failed install touched the running release: %v", a)
		}
	}
	if r := h.lastReport(); r.Generation != 2 || r.TargetVersion != "v2" || !strings.Contains(r.Reason, "verify v2: sha256 mismatch") {
		t.Fatalf("report %v", r)
	}
}

func TestCheckFailReverts(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 1), false)
	h.toChecking(asg("v2", 2), true)
	for i := 0; i < 12; i++ {
		h.advance(5 * time.Second)
		h.checks(false)
	}
	h.phase(v1.Phase_PHASE_REVERTING)
	h.done(ActStop, "", nil)
	h.done(ActSwitch, "v1", nil)
	h.done(ActStart, "v1", nil)
	h.checks(true)
	h.advance(testMinHealthy)
	h.checks(true)
	h.phase(v1.Phase_PHASE_REVERTED)
	h.versions("v1", "v1")
	if r := h.lastReport(); r.Generation != 2 || r.TargetVersion != "v2" || !strings.Contains(r.Reason, "c0: d") {
		t.Fatalf("report %v", r)
	}
}

func TestCrashLoopReverts(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 1), false)
	h.toChecking(asg("v2", 2), true)
	for i := 0; i < CrashLoopExits; i++ {
		h.advance(time.Second)
		h.checks(true)
		h.step(Exited(h.epoch, h.now))
	}
	h.phase(v1.Phase_PHASE_REVERTING)
	h.expect(ActStop, "")
}

func TestNoLastGoodStopsAndFails(t *testing.T) {
	h := newHarness(t)
	h.toChecking(asg("v1", 1), false)
	h.advance(testDeadline)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_REVERTING)
	h.done(ActStop, "", nil)
	h.done(ActSwitch, "", nil) // removes `current`
	h.phase(v1.Phase_PHASE_FAILED)
	h.versions("", "")
	if r := h.lastReport().Reason; !strings.Contains(r, "no last good release: service stopped") {
		t.Fatalf("reason %q", r)
	}
}

func TestZeroChecksHealthyAfterRunningMinHealthy(t *testing.T) {
	h := newHarness(t)
	h.toChecking(asgChecks("v1", 1, 0), false)
	h.advance(testMinHealthy / 2)
	h.step(Exited(h.epoch, h.now)) // restarts the window
	h.advance(testMinHealthy - time.Second)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_CHECKING)
	h.advance(time.Second)
	h.step(Tick(h.now))
	h.phase(v1.Phase_PHASE_HEALTHY)
}

func TestMinHealthyZeroIsHealthyOnFirstPass(t *testing.T) {
	h := newHarness(t)
	a := asg("v1", 1)
	a.Spec.MinHealthyTime = durationpb.New(0)
	h.toChecking(a, false)
	h.checks(true)
	h.phase(v1.Phase_PHASE_HEALTHY)
}

func TestGenerations(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 3), false)
	// A stale assignment is refused: only a report, still at generation 3,
	// naming the refusal; it stays in every report until a newer one.
	const refused = "refused assignment: generation 2 (release v2) is older than the accepted generation 3"
	acts := h.assign(asg("v2", 2))
	if !reflect.DeepEqual(kinds(acts), []ActionKind{ActReport}) || acts[0].Report.Generation != 3 ||
		acts[0].Report.Phase != v1.Phase_PHASE_HEALTHY || acts[0].Report.Reason != refused {
		t.Fatalf("stale assignment: %v", acts)
	}
	acts = h.assign(asg("v1", 3))
	if !reflect.DeepEqual(kinds(acts), []ActionKind{ActReport}) || acts[0].Report.Generation != 3 || acts[0].Report.Reason != refused {
		t.Fatalf("repeat: %v", acts)
	}
	if got := h.m.Report().GetReason(); got != refused {
		t.Fatalf("Report().Reason %q, want %q", got, refused)
	}
	acts = h.assign(asg("v1", 4))
	if has(acts, ActStop) || has(acts, ActStart) || h.inflight != nil {
		t.Fatalf("same version restarted: %v", acts)
	}
	if r := h.lastReport(); r.Generation != 4 || r.Phase != v1.Phase_PHASE_HEALTHY || r.Reason != "" {
		t.Fatalf("report %v", r)
	}
}

func TestNewAssignmentMidInstall(t *testing.T) {
	t.Run("before switch abandons", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.assign(asg("v2", 2))
		if acts := h.assign(asg("v3", 3)); len(acts) != 0 {
			t.Fatalf("acted while a step is in flight: %v", acts)
		}
		if acts := h.assign(asg("v4", 3)); len(acts) != 0 { // repeat of the pending generation
			t.Fatalf("repeat of pending: %v", acts)
		}
		h.done(ActFetch, "v2", nil)
		h.expect(ActFetch, "v3")
		h.phase(v1.Phase_PHASE_FETCHING)
		if g := h.m.Generation(); g != 3 {
			t.Fatalf("generation %d", g)
		}
		h.versions("v1", "v1")
	})
	t.Run("before switch back to current", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.assign(asg("v2", 2))
		h.done(ActFetch, "v2", nil)
		h.assign(asg("v1", 3))
		h.done(ActVerify, "v2", nil)
		h.phase(v1.Phase_PHASE_HEALTHY)
		if h.inflight != nil || h.m.Generation() != 3 {
			t.Fatalf("inflight %v gen %d", h.inflight, h.m.Generation())
		}
	})
	t.Run("same version newer generation continues", func(t *testing.T) {
		h := newHarness(t)
		h.assign(asg("v1", 1))
		h.assign(asg("v1", 2))
		h.done(ActFetch, "v1", nil)
		h.expect(ActVerify, "v1")
		if g := h.lastReport().Generation; g != 2 {
			t.Fatalf("generation %d", g)
		}
	})
	t.Run("after switch finishes first", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.toChecking(asg("v2", 2), true)
		h.assign(asg("v3", 3))
		h.checks(true)
		h.advance(testMinHealthy)
		h.checks(true)
		// v2 became healthy, then v3 started at once.
		h.phase(v1.Phase_PHASE_FETCHING)
		h.versions("v2", "v2")
		h.expect(ActFetch, "v3")
	})
	t.Run("rollback to last good during revert", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.toChecking(asg("v2", 2), true)
		h.advance(testDeadline)
		h.step(Tick(h.now))
		h.assign(asg("v1", 3))
		h.done(ActStop, "", nil)
		h.done(ActSwitch, "v1", nil)
		h.done(ActStart, "v1", nil)
		h.checks(true)
		h.advance(testMinHealthy)
		h.checks(true)
		// REVERTED, then the rollback assignment for v1 is simply healthy.
		h.phase(v1.Phase_PHASE_HEALTHY)
		if r := h.lastReport(); r.Generation != 3 || r.CurrentVersion != "v1" {
			t.Fatalf("report %v", r)
		}
		if h.inflight != nil {
			t.Fatalf("restarted: %v", *h.inflight)
		}
	})
	t.Run("invalid while installing abandons", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.assign(asg("v2", 2))
		h.step(Invalid(3, "release.artifact.size: 0", h.now))
		h.done(ActFetch, "v2", nil)
		h.phase(v1.Phase_PHASE_FAILED)
		h.versions("v1", "v1")
		if h.inflight != nil {
			t.Fatalf("in flight: %v", *h.inflight)
		}
	})
}

// restore restarts the harness's machine from its last persisted snapshot.
func (h *harness) restore() {
	h.t.Helper()
	if h.persist == nil {
		h.t.Fatal("nothing persisted")
	}
	h.inflight = nil
	h.checking = false
	m, acts := Restore(*h.persist, h.now)
	h.m = m
	h.epoch = 0
	h.record(acts)
}

func TestRestartRecovery(t *testing.T) {
	t.Run("healthy restarts and rechecks", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.restore()
		h.phase(v1.Phase_PHASE_STARTING)
		h.done(ActSwitch, "v1", nil)
		h.done(ActStart, "v1", nil)
		h.phase(v1.Phase_PHASE_CHECKING)
		h.checks(true)
		h.advance(testMinHealthy)
		h.checks(true)
		h.phase(v1.Phase_PHASE_HEALTHY)
		h.versions("v1", "v1")
	})
	t.Run("crash while checking unverified reverts", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.toChecking(asg("v2", 2), true)
		h.restore()
		h.expect(ActSwitch, "v1") // current points back at the verified release
		h.done(ActSwitch, "v1", nil)
		h.done(ActStart, "v1", nil)
		h.checks(true)
		h.advance(testMinHealthy)
		h.checks(true)
		h.phase(v1.Phase_PHASE_REVERTED)
		h.versions("v1", "v1")
		if r := h.lastReport(); r.Generation != 2 || !strings.Contains(r.Reason, "agent restarted before v2 became healthy") {
			t.Fatalf("report %v", r)
		}
	})
	t.Run("crash mid switch without last good", func(t *testing.T) {
		h := newHarness(t)
		atSwitching(h)
		h.restore()
		h.done(ActSwitch, "", nil)
		h.phase(v1.Phase_PHASE_FAILED)
		h.versions("", "")
		if h.inflight != nil {
			t.Fatalf("in flight %v", *h.inflight)
		}
	})
	t.Run("crash before switch resumes install", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.assign(asg("v2", 2))
		h.done(ActFetch, "v2", nil)
		h.restore()
		h.done(ActSwitch, "v1", nil)
		h.done(ActStart, "v1", nil)
		h.checks(true)
		h.advance(testMinHealthy)
		h.checks(true)
		h.phase(v1.Phase_PHASE_FETCHING)
		h.expect(ActFetch, "v2")
		h.versions("v1", "v1")
	})
	t.Run("last good fails recheck", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.restore()
		h.done(ActSwitch, "v1", nil)
		h.done(ActStart, "v1", errBoom)
		h.phase(v1.Phase_PHASE_FAILED)
		if r := h.lastReport().Reason; !strings.Contains(r, "restart v1: boom") {
			t.Fatalf("reason %q", r)
		}
		// A new assignment for v1 now reinstalls and restarts it.
		h.assign(asg("v1", 2))
		h.expect(ActFetch, "v1")
	})
}

// switchDone completes the ActSwitch in flight with the link read back.
func (h *harness) switchDone(version string, err error, link string) []Action {
	h.t.Helper()
	h.expect(ActSwitch, version)
	seq := h.inflight.Seq
	h.inflight = nil
	return h.step(SwitchDone(seq, err, link, h.now))
}

// A failed switch back during recovery must not be taken for a revert: the
// link still points at the unverified release.
func TestRecoverySwitchFailure(t *testing.T) {
	interrupted := func(t *testing.T) *harness {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.toChecking(asg("v2", 2), true)
		h.restore()
		return h
	}
	t.Run("link still on the unverified release", func(t *testing.T) {
		h := interrupted(t)
		acts := h.switchDone("v1", errBoom, "v2")
		h.phase(v1.Phase_PHASE_FAILED)
		h.versions("v2", "v1")
		if h.inflight != nil {
			t.Fatalf("started %v after a failed switch back", *h.inflight)
		}
		if !has(acts, ActPersist) || h.persist.Phase != v1.Phase_PHASE_FAILED || Version(h.persist.Current) != "v2" {
			t.Fatalf("persisted %+v", h.persist)
		}
		r := h.lastReport().Reason
		for _, want := range []string{"agent restarted before v2 became healthy", `switch back to "v1": boom`, "still points at \"v2\""} {
			if !strings.Contains(r, want) {
				t.Fatalf("reason %q lacks %q", r, want)
			}
		}
		// The next assignment installs normally.
		h.assign(asg("v3", 3))
		h.expect(ActFetch, "v3")
	})
	t.Run("link unknown", func(t *testing.T) {
		h := interrupted(t)
		h.done(ActSwitch, "v1", errBoom)
		h.phase(v1.Phase_PHASE_FAILED)
		h.versions("", "v1")
		if r := h.lastReport().Reason; !strings.Contains(r, "unknown") || !strings.Contains(r, "boom") {
			t.Fatalf("reason %q", r)
		}
	})
	t.Run("settled service", func(t *testing.T) {
		h := newHarness(t)
		h.toHealthy(asg("v1", 1), false)
		h.restore()
		h.switchDone("v1", errBoom, "")
		h.phase(v1.Phase_PHASE_FAILED)
		h.versions("", "v1")
		if r := h.lastReport().Reason; !strings.Contains(r, "after agent restart switch back") {
			t.Fatalf("reason %q", r)
		}
	})
	t.Run("link already where recovery wanted it", func(t *testing.T) {
		h := interrupted(t)
		h.switchDone("v1", errBoom, "v1")
		h.expect(ActStart, "v1")
	})
}

func TestFetchSuperseded(t *testing.T) {
	h := newHarness(t)
	h.toHealthy(asg("v1", 1), false)
	h.assign(asg("v2", 2))
	if k, seq := h.m.InFlight(); k != ActFetch || seq != h.inflight.Seq {
		t.Fatalf("InFlight = %v %d, want fetch %d", k, seq, h.inflight.Seq)
	}
	if h.m.FetchSuperseded() {
		t.Fatal("superseded with nothing pending")
	}
	h.assign(asg("v2", 3)) // same release, newer generation: keep fetching
	if h.m.FetchSuperseded() {
		t.Fatal("same release superseded")
	}
	h.assign(asg("v3", 4))
	if !h.m.FetchSuperseded() {
		t.Fatal("newer release does not supersede the fetch")
	}
	h.done(ActFetch, "v2", errBoom) // the cancelled fetch
	h.phase(v1.Phase_PHASE_FETCHING)
	h.expect(ActFetch, "v3")
	if r := h.lastReport(); r.Generation != 4 || strings.Contains(r.Reason, "boom") {
		t.Fatalf("report %v", r)
	}
	h.step(Invalid(5, "bad", h.now))
	if !h.m.FetchSuperseded() {
		t.Fatal("invalid assignment does not supersede the fetch")
	}
	h.done(ActFetch, "v3", nil)
	if k, _ := h.m.InFlight(); k != 0 || h.m.FetchSuperseded() {
		t.Fatalf("in flight %v after settling", k)
	}
}
