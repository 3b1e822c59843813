package stats

import (
	"math"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// t0 is the start of the 30-day window; now is its end.
var (
	t0  = time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	now = t0.Add(30 * day)
)

const (
	succeeded  = v1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	failed     = v1.RolloutState_ROLLOUT_STATE_FAILED
	superseded = v1.RolloutState_ROLLOUT_STATE_SUPERSEDED
	running    = v1.RolloutState_ROLLOUT_STATE_PROGRESSING
	m          = time.Minute
	hr         = time.Hour
)

// at is t0 + d.
func at(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }

func rel(version string, commit, created *timestamppb.Timestamp) *v1.Release {
	return &v1.Release{Version: version, CommitTime: commit, CreatedAt: created}
}

// ro builds a rollout; started and finished may be nil.
func ro(id, from, to string, st v1.RolloutState, created, started, finished *timestamppb.Timestamp, waves ...*v1.Wave) *v1.Rollout {
	return &v1.Rollout{Id: id, FromVersion: from, ToVersion: to, State: st,
		CreatedAt: created, StartedAt: started, FinishedAt: finished, Waves: waves}
}

// bake5 sets a 5 minute bake policy.
func bake5(r *v1.Rollout) *v1.Rollout {
	r.Policy = &v1.RolloutPolicy{Bake: durationpb.New(5 * m)}
	return r
}

// wave builds a wave whose hosts became done at the given times.
func wave(started, done, bakeUntil *timestamppb.Timestamp, hostsDone ...*timestamppb.Timestamp) *v1.Wave {
	w := &v1.Wave{StartedAt: started, DoneAt: done, BakeUntil: bakeUntil}
	for _, d := range hostsDone {
		w.Hosts = append(w.Hosts, &v1.HostProgress{HostId: "h", DoneAt: d})
	}
	return w
}

// oneHost is a wave with one host that never became done (failed rollouts).
func oneHost(started *timestamppb.Timestamp) *v1.Wave {
	return &v1.Wave{StartedAt: started, Hosts: []*v1.HostProgress{{HostId: "h"}}}
}

// web: three clean deployments, one failure restored (restored_at), one
// deployment rolled back after it succeeded, one superseded by a newer
// release, a deployment of a release without commit time, and one rollout
// before the window.
func webHistory() ServiceHistory {
	return ServiceHistory{
		Service: "web",
		Releases: []*v1.Release{
			rel("v0", at(-3*day), at(-2*day)),
			rel("v1", at(1*day), at(1*day+10*m)),
			rel("v2", at(2*day), at(2*day+5*m)),
			rel("v3", nil, at(3*day)),
			rel("v4", at(4*day), at(4*day+20*m)),
			rel("v5", at(5*day-30*m), at(5*day)),
			rel("v6", nil, at(5*day+1*hr)),
		},
		Rollouts: []*v1.Rollout{
			// Before the window: not counted, but it is the first rollout.
			ro("000000", "", "v0", succeeded, at(-2*day), at(-2*day), at(-2*day+10*m),
				wave(at(-2*day), at(-2*day+10*m), nil, at(-2*day+10*m))),
			// Canary baked 5m (12m..17m); the last wave's bake (25m..30m)
			// comes after every host is live. live = +25m.
			bake5(ro("000001", "v0", "v1", succeeded, at(1*day+10*m), at(1*day+10*m), at(1*day+30*m),
				wave(at(1*day+10*m), at(1*day+17*m), at(1*day+17*m), at(1*day+12*m)),
				wave(at(1*day+17*m), at(1*day+30*m), at(1*day+30*m), at(1*day+20*m), at(1*day+25*m)))),
			// Manual: an hour waiting for approval.
			ro("000002", "v1", "v2", succeeded, at(2*day+5*m), at(2*day+65*m), at(2*day+75*m),
				wave(at(2*day+65*m), at(2*day+75*m), nil, at(2*day+75*m))),
			// Failed, restored 4 minutes after the failure.
			func() *v1.Rollout {
				r := ro("000003", "v2", "v3", failed, at(3*day), at(3*day), at(3*day+10*m), oneHost(at(3*day)))
				r.FailedAt = at(3*day + 10*m)
				r.RestoredAt = at(3*day + 14*m)
				return r
			}(),
			// Succeeded, then rolled back (3 minutes).
			ro("000004", "v2", "v4", succeeded, at(4*day+20*m), at(4*day+20*m), at(4*day+50*m),
				wave(at(4*day+20*m), at(4*day+50*m), nil, at(4*day+50*m))),
			func() *v1.Rollout {
				r := ro("000005", "v4", "v2", succeeded, at(4*day+2*hr), at(4*day+2*hr), at(4*day+2*hr+3*m),
					wave(at(4*day+2*hr), at(4*day+2*hr+3*m), nil, at(4*day+2*hr+3*m)))
				r.Rollback = true
				return r
			}(),
			// Superseded by the next release.
			ro("000006", "v2", "v5", superseded, at(5*day), at(5*day), at(5*day+1*hr), oneHost(at(5*day))),
			ro("000007", "v2", "v6", succeeded, at(5*day+1*hr), at(5*day+1*hr), at(5*day+80*m),
				wave(at(5*day+1*hr), at(5*day+80*m), nil, at(5*day+80*m))),
		},
	}
}

// api: no release records; a rollout rolled back while running; a failure
// never restored; a rollout that selected no hosts; one still running.
func apiHistory() ServiceHistory {
	rb := ro("000003", "a1", "a1", succeeded, at(11*day+10*m), at(11*day+10*m), at(11*day+12*m),
		wave(at(11*day+10*m), at(11*day+12*m), nil, at(11*day+12*m)))
	rb.Rollback = true
	return ServiceHistory{
		Service: "api",
		Rollouts: []*v1.Rollout{
			ro("000001", "", "a1", succeeded, at(10*day), at(10*day), at(10*day+5*m),
				wave(at(10*day), at(10*day+5*m), nil, at(10*day+5*m))),
			ro("000002", "a1", "a2", superseded, at(11*day), at(11*day), at(11*day+10*m), oneHost(at(11*day))),
			rb,
			ro("000004", "a1", "a3", failed, at(12*day), at(12*day), at(12*day), oneHost(at(12*day))),
			ro("000005", "a1", "a4", succeeded, at(13*day), at(13*day), at(13*day)),
			ro("000006", "a1", "a5", running, at(14*day), at(14*day), nil, oneHost(at(14*day))),
		},
	}
}

// db: a failure without failed_at or restored_at, restored by the next
// release (fix forward) three hours later.
func dbHistory() ServiceHistory {
	return ServiceHistory{
		Service:  "db",
		Releases: []*v1.Release{rel("d2", at(20*day+1*hr), at(20*day+2*hr))},
		Rollouts: []*v1.Rollout{
			ro("000001", "", "d1", failed, at(20*day), at(20*day), at(20*day+10*m), oneHost(at(20*day))),
			ro("000002", "", "d2", succeeded, at(20*day+2*hr), at(20*day+2*hr), at(20*day+190*m),
				wave(at(20*day+2*hr), at(20*day+190*m), nil, at(20*day+190*m))),
		},
	}
}

// want is the expected DeployStats in a compact form.
type want struct {
	rollouts, succeeded, failed, rolledBack, superseded uint32
	perDay                                              float64
	cfr                                                 float64
	lead, c2r, r2s, rollout, bake, restore              dur
	leadBand, freqBand, cfrBand, restoreBand, overall   string
}

// dur is count, median, p90.
type dur struct {
	n        uint32
	med, p90 time.Duration
}

func checkDur(t *testing.T, what string, got *v1.DurationStats, w dur) {
	t.Helper()
	if got == nil {
		t.Errorf("%s: nil", what)
		return
	}
	if got.GetCount() != w.n {
		t.Errorf("%s: count %d, want %d", what, got.GetCount(), w.n)
	}
	if w.n == 0 {
		if got.GetMedian() != nil || got.GetP90() != nil {
			t.Errorf("%s: empty sample has median %v p90 %v", what, got.GetMedian(), got.GetP90())
		}
		return
	}
	if d := got.GetMedian().AsDuration(); d != w.med {
		t.Errorf("%s: median %s, want %s", what, d, w.med)
	}
	if d := got.GetP90().AsDuration(); d != w.p90 {
		t.Errorf("%s: p90 %s, want %s", what, d, w.p90)
	}
}

func check(t *testing.T, name string, got *v1.DeployStats, w want) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: nil stats", name)
	}
	counts := [][3]any{
		{"rollouts", got.GetRollouts(), w.rollouts},
		{"succeeded", got.GetSucceeded(), w.succeeded},
		{"failed", got.GetFailed(), w.failed},
		{"rolled_back", got.GetRolledBack(), w.rolledBack},
		{"superseded", got.GetSuperseded(), w.superseded},
	}
	for _, c := range counts {
		if c[1] != c[2] {
			t.Errorf("%s: %s = %v, want %v", name, c[0], c[1], c[2])
		}
	}
	if math.Abs(got.GetDeploysPerDay()-w.perDay) > 1e-9 {
		t.Errorf("%s: deploys_per_day %v, want %v", name, got.GetDeploysPerDay(), w.perDay)
	}
	if math.Abs(got.GetChangeFailureRate()-w.cfr) > 1e-9 {
		t.Errorf("%s: change_failure_rate %v, want %v", name, got.GetChangeFailureRate(), w.cfr)
	}
	checkDur(t, name+" lead_time", got.GetLeadTime(), w.lead)
	checkDur(t, name+" commit_to_release", got.GetCommitToRelease(), w.c2r)
	checkDur(t, name+" release_to_start", got.GetReleaseToStart(), w.r2s)
	checkDur(t, name+" rollout", got.GetRollout(), w.rollout)
	checkDur(t, name+" bake", got.GetBake(), w.bake)
	checkDur(t, name+" time_to_restore", got.GetTimeToRestore(), w.restore)
	bands := [][3]string{
		{"lead_time_band", got.GetLeadTimeBand(), w.leadBand},
		{"deploy_frequency_band", got.GetDeployFrequencyBand(), w.freqBand},
		{"change_failure_band", got.GetChangeFailureBand(), w.cfrBand},
		{"restore_band", got.GetRestoreBand(), w.restoreBand},
		{"overall_band", got.GetOverallBand(), w.overall},
	}
	for _, b := range bands {
		if b[1] != b[2] {
			t.Errorf("%s: %s = %q, want %q", name, b[0], b[1], b[2])
		}
	}
}

// The hand-computed answers for web, api, db and the fleet (see each
// history's comments).
var (
	wantWeb = want{
		rollouts: 6, succeeded: 3, failed: 1, rolledBack: 1, superseded: 1,
		// 4 completed deployments (000001, 2, 4, 7) over 30 days.
		perDay: 4.0 / 30,
		// (1 failed + 1 rolled back) / (3 + 1 + 1)
		cfr: 0.4,
		// 25m (000001), 1h15m (000002), 50m (000004)
		lead: dur{3, 50 * m, 75 * m},
		// 10m, 5m, 20m
		c2r: dur{3, 10 * m, 20 * m},
		// 0, 1h, 0, 0 (000007's release has no commit time, but is known)
		r2s: dur{4, 0, 1 * hr},
		// 15m, 10m, 30m, 20m
		rollout: dur{4, 15 * m, 30 * m},
		// 5m (the canary's bake), 0, 0, 0
		bake: dur{4, 0, 5 * m},
		// 4m (restored_at), 3m (rollback)
		restore:  dur{2, 3 * m, 4 * m},
		leadBand: BandElite, freqBand: BandMedium, cfrBand: BandMedium, restoreBand: BandElite, overall: BandMedium,
	}
	wantAPI = want{
		rollouts: 3, succeeded: 1, failed: 1, rolledBack: 1,
		// 1 deployment; the first rollout was 20 days before now.
		perDay: 1.0 / 20,
		cfr:    2.0 / 3,
		// no releases known: no lead time, only the rollout itself
		rollout: dur{1, 5 * m, 5 * m},
		bake:    dur{1, 0, 0},
		// the rollback of the running rollout took 2m; 000004 never restored
		restore:  dur{1, 2 * m, 2 * m},
		freqBand: BandMedium, cfrBand: BandLow, restoreBand: BandElite, overall: BandLow,
	}
	wantDB = want{
		rollouts: 2, succeeded: 1, failed: 1,
		// 1 deployment over 10 days
		perDay:  0.1,
		cfr:     0.5,
		lead:    dur{1, 2*hr + 10*m, 2*hr + 10*m},
		c2r:     dur{1, 1 * hr, 1 * hr},
		r2s:     dur{1, 0, 0},
		rollout: dur{1, 70 * m, 70 * m},
		bake:    dur{1, 0, 0},
		// finished_at (+20d+10m) -> the next success (+20d+190m)
		restore:  dur{1, 3 * hr, 3 * hr},
		leadBand: BandHigh, freqBand: BandMedium, cfrBand: BandLow, restoreBand: BandHigh, overall: BandLow,
	}
	wantFleet = want{
		rollouts: 11, succeeded: 5, failed: 3, rolledBack: 2, superseded: 1,
		// 6 deployments; the fleet's first rollout is before the window
		perDay:   6.0 / 30,
		cfr:      5.0 / 10,
		lead:     dur{4, 50 * m, 2*hr + 10*m},
		c2r:      dur{4, 10 * m, 1 * hr},
		r2s:      dur{5, 0, 1 * hr},
		rollout:  dur{6, 15 * m, 70 * m},
		bake:     dur{6, 0, 5 * m},
		restore:  dur{4, 3 * m, 3 * hr},
		leadBand: BandElite, freqBand: BandHigh, cfrBand: BandLow, restoreBand: BandElite, overall: BandLow,
	}
)

func TestComputeKnownHistory(t *testing.T) {
	in := []ServiceHistory{webHistory(), dbHistory(), apiHistory()}
	before := make([]ServiceHistory, len(in))
	for i, h := range in {
		before[i] = cloneHistory(h)
	}
	resp := Compute(in, now, 30*day, false)

	if got := resp.GetFrom().AsTime(); !got.Equal(t0) {
		t.Errorf("from %s, want %s", got, t0)
	}
	if got := resp.GetTo().AsTime(); !got.Equal(now) {
		t.Errorf("to %s, want %s", got, now)
	}
	var names []string
	for _, s := range resp.GetServices() {
		names = append(names, s.GetService())
	}
	if !slices.Equal(names, []string{"api", "db", "web"}) {
		t.Fatalf("services %v, want [api db web]", names)
	}
	check(t, "api", resp.GetServices()[0], wantAPI)
	check(t, "db", resp.GetServices()[1], wantDB)
	check(t, "web", resp.GetServices()[2], wantWeb)
	check(t, "fleet", resp.GetFleet(), wantFleet)
	if resp.GetFleet().GetService() != "" {
		t.Errorf("fleet service %q, want \"\"", resp.GetFleet().GetService())
	}
	for i := range in {
		if !equalHistory(in[i], before[i]) {
			t.Errorf("Compute modified its input %s", in[i].Service)
		}
	}
}

// The order of rollouts in the input does not matter: history order comes
// from created_at.
func TestComputeInputOrder(t *testing.T) {
	hist := webHistory()
	slices.Reverse(hist.Rollouts)
	slices.Reverse(hist.Releases)
	check(t, "web reversed", Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0], wantWeb)
}

// Two histories with the same name are one service.
func TestComputeMergesSameService(t *testing.T) {
	hist := webHistory()
	a := ServiceHistory{Service: "web", Releases: hist.Releases[:3], Rollouts: hist.Rollouts[:4]}
	b := ServiceHistory{Service: "web", Releases: hist.Releases[3:], Rollouts: hist.Rollouts[4:]}
	resp := Compute([]ServiceHistory{b, a}, now, 30*day, false)
	if len(resp.GetServices()) != 1 {
		t.Fatalf("%d services, want 1", len(resp.GetServices()))
	}
	check(t, "web merged", resp.GetServices()[0], wantWeb)
}

func TestComputeEmpty(t *testing.T) {
	resp := Compute(nil, now, 0, false) // since 0: the default window
	if len(resp.GetServices()) != 0 {
		t.Errorf("services %v, want none", resp.GetServices())
	}
	if got := now.Sub(resp.GetFrom().AsTime()); got != DefaultSince {
		t.Errorf("window %s, want the default %s", got, DefaultSince)
	}
	check(t, "fleet", resp.GetFleet(), want{})

	// A service with no history at all: every figure empty, no band.
	resp = Compute([]ServiceHistory{{Service: "new"}}, now, 30*day, false)
	check(t, "new", resp.GetServices()[0], want{})
}

func TestComputeWindow(t *testing.T) {
	mk := func(id string, finished time.Duration) *v1.Rollout {
		return ro(id, "", "v"+id, succeeded, at(finished-m), at(finished-m), at(finished),
			wave(at(finished-m), at(finished), nil, at(finished)))
	}
	hist := ServiceHistory{Service: "s", Rollouts: []*v1.Rollout{
		mk("1", -40*day),  // long before
		mk("2", -1),       // just before the window
		mk("3", 0),        // at its start: in
		mk("4", 30*day),   // at now: in
		mk("5", 30*day+1), // after now (clock skew): out
	}}
	got := Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0]
	check(t, "s", got, want{
		rollouts: 2, succeeded: 2, perDay: 2.0 / 30,
		rollout: dur{2, m, m}, bake: dur{2, 0, 0},
		freqBand: BandMedium, cfrBand: BandElite, overall: BandMedium,
	})

	// Only rollouts outside the window: nothing counted, but the history
	// exists, so the frequency is measured (0/day: low).
	hist.Rollouts = hist.Rollouts[:2]
	got = Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0]
	check(t, "s old", got, want{freqBand: BandLow, overall: BandLow})

	// A one-hour window: the rollout at now is the only one.
	hist.Rollouts = []*v1.Rollout{mk("3", 0), mk("4", 30*day)}
	got = Compute([]ServiceHistory{hist}, now, time.Hour, false).GetServices()[0]
	check(t, "s 1h", got, want{
		rollouts: 1, succeeded: 1, perDay: 24,
		rollout: dur{1, m, m}, bake: dur{1, 0, 0},
		freqBand: BandElite, cfrBand: BandElite, overall: BandElite,
	})
}

// A service younger than the window is measured over its age, but at least
// a day.
func TestComputeYoungService(t *testing.T) {
	r := func(id string, created time.Duration) *v1.Rollout {
		return ro(id, "", "v"+id, succeeded, at(created), at(created), at(created+m),
			wave(at(created), at(created+m), nil, at(created+m)))
	}
	// Two deployments over the last 2 days: 1/day.
	hist := ServiceHistory{Service: "s", Rollouts: []*v1.Rollout{r("1", 28*day), r("2", 29*day)}}
	if got := Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0].GetDeploysPerDay(); got != 1 {
		t.Errorf("2 deployments in 2 days: %v/day, want 1", got)
	}
	// Three deployments in the last hour: 3/day, not 72/day.
	hist = ServiceHistory{Service: "s", Rollouts: []*v1.Rollout{r("1", 30*day-hr), r("2", 30*day-30*m), r("3", 30*day-2*m)}}
	if got := Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0].GetDeploysPerDay(); got != 3 {
		t.Errorf("3 deployments in an hour: %v/day, want 3", got)
	}
}

func TestComputeLeadTimeEdges(t *testing.T) {
	// The commit time is after the release was created and after the hosts
	// went live (CI's clock ahead): spans count as 0, not negative.
	hist := ServiceHistory{
		Service:  "s",
		Releases: []*v1.Release{rel("v1", at(2*day), at(1*day))},
		Rollouts: []*v1.Rollout{ro("1", "", "v1", succeeded, at(1*day), at(1*day), at(1*day+m),
			wave(at(1*day), at(1*day+m), nil, at(1*day+m)))},
	}
	got := Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0]
	checkDur(t, "skewed lead_time", got.GetLeadTime(), dur{1, 0, 0})
	checkDur(t, "skewed commit_to_release", got.GetCommitToRelease(), dur{1, 0, 0})
	checkDur(t, "skewed rollout", got.GetRollout(), dur{1, m, m})

	// Missing commit time: no lead time, the rest measured.
	hist.Releases[0].CommitTime = nil
	got = Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0]
	checkDur(t, "no commit lead_time", got.GetLeadTime(), dur{})
	checkDur(t, "no commit commit_to_release", got.GetCommitToRelease(), dur{})
	checkDur(t, "no commit release_to_start", got.GetReleaseToStart(), dur{1, 0, 0})
	if got.GetLeadTimeBand() != "" {
		t.Errorf("lead time band %q without a commit time, want \"\"", got.GetLeadTimeBand())
	}

	// No host records done_at: live is finished_at.
	r := ro("1", "", "v1", succeeded, at(1*day), at(1*day), at(1*day+7*m), &v1.Wave{Hosts: []*v1.HostProgress{{HostId: "h"}}})
	hist = ServiceHistory{Service: "s", Rollouts: []*v1.Rollout{r}}
	got = Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0]
	checkDur(t, "finished_at rollout", got.GetRollout(), dur{1, 7 * m, 7 * m})
}

// Bake without a bake duration in the policy starts at the wave's last host
// done; a bake cut short by the end of the rollout ends at finished_at.
func TestBakeTime(t *testing.T) {
	r := ro("1", "", "v1", succeeded, at(0), at(0), at(60*m),
		// bake 10m..20m by host done (no policy)
		wave(at(0), at(20*m), at(20*m), at(10*m)),
		// no bake_until: no bake
		wave(at(20*m), at(30*m), nil, at(30*m)),
		// bake 35m..done_at unset -> finished_at 60m, clipped to live (50m)
		wave(at(30*m), nil, at(60*m), at(35*m)),
		wave(at(40*m), at(50*m), nil, at(50*m)),
	)
	live, _ := liveAt(r)
	if want := t0.Add(50 * m); !live.Equal(want) {
		t.Fatalf("live %s, want %s", live, want)
	}
	if got := bakeTime(r, t0, live); got != 25*m {
		t.Errorf("bake %s, want 25m (10m + 15m)", got)
	}
	// With a policy bake of 5m the first wave baked 15m..20m and the third
	// 55m..60m, after every host was live.
	r.Policy = &v1.RolloutPolicy{Bake: durationpb.New(5 * m)}
	if got := bakeTime(r, t0, live); got != 5*m {
		t.Errorf("bake with policy %s, want 5m", got)
	}
}

// A rollback to the release that is already stable (it superseded a running
// rollout) does not mark the previous success as rolled back; a rollback
// past it does.
func TestRolledBack(t *testing.T) {
	rb := func(id, from, to string, created time.Duration) *v1.Rollout {
		r := ro(id, from, to, succeeded, at(created), at(created), at(created+m), oneHost(at(created)))
		r.Rollback = true
		return r
	}
	ok := func(id, from, to string, created time.Duration) *v1.Rollout {
		return ro(id, from, to, succeeded, at(created), at(created), at(created+m), oneHost(at(created)))
	}
	sup := func(id, from, to string, created time.Duration) *v1.Rollout {
		return ro(id, from, to, superseded, at(created), at(created), at(created+m), oneHost(at(created)))
	}
	fail := func(id, from, to string, created time.Duration) *v1.Rollout {
		return ro(id, from, to, failed, at(created), at(created), at(created+m), oneHost(at(created)))
	}
	tests := []struct {
		name string
		ros  []*v1.Rollout
		want map[int]int
	}{
		{"rollback of a success", []*v1.Rollout{ok("1", "", "a", 0), ok("2", "a", "b", hr), rb("3", "b", "a", 2*hr)}, map[int]int{1: 2}},
		{"rollback of a running rollout to stable", []*v1.Rollout{ok("1", "", "a", 0), sup("2", "a", "b", hr), rb("3", "a", "a", hr+m)}, map[int]int{1: 2}},
		{"rollback of a running rollout past stable", []*v1.Rollout{ok("1", "", "a", 0), ok("2", "a", "b", hr), sup("3", "b", "c", 2*hr), rb("4", "b", "a", 2*hr+m)}, map[int]int{1: 3, 2: 3}},
		{"superseded by a release", []*v1.Rollout{ok("1", "", "a", 0), sup("2", "a", "b", hr), ok("3", "a", "c", 2*hr)}, map[int]int{}},
		{"failure then rollback past the stable release", []*v1.Rollout{ok("1", "", "a", 0), ok("2", "a", "b", hr), fail("3", "b", "c", 2*hr), rb("4", "b", "a", 3*hr)}, map[int]int{1: 3}},
		{"rollback of a rollback", []*v1.Rollout{ok("1", "", "a", 0), ok("2", "a", "b", hr), rb("3", "b", "a", 2*hr), rb("4", "a", "b", 3*hr)}, map[int]int{1: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rolledBack(tt.ros)
			if len(got) != len(tt.want) {
				t.Fatalf("rolled back %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("rolled back %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestNearestRank(t *testing.T) {
	s := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		s    []time.Duration
		p    int
		want time.Duration
	}{
		{s, 50, 5}, {s, 90, 9}, {s, 100, 10}, {s, 1, 1},
		{s[:1], 50, 1}, {s[:1], 90, 1},
		{s[:2], 50, 1}, {s[:2], 90, 2},
		{s[:3], 50, 2}, {s[:3], 90, 3},
	} {
		if got := nearestRank(c.s, c.p); got != c.want {
			t.Errorf("p%d of %v = %v, want %v", c.p, c.s, got, c.want)
		}
	}
}

func TestBands(t *testing.T) {
	dtests := []struct {
		f    func(time.Duration) string
		name string
		d    time.Duration
		want string
	}{
		{LeadTimeBand, "lead", 59 * m, BandElite},
		{LeadTimeBand, "lead", hr, BandHigh},
		{LeadTimeBand, "lead", 7*day - 1, BandHigh},
		{LeadTimeBand, "lead", 7 * day, BandMedium},
		{LeadTimeBand, "lead", 30*day - 1, BandMedium},
		{LeadTimeBand, "lead", 30 * day, BandLow},
		{RestoreBand, "restore", 0, BandElite},
		{RestoreBand, "restore", hr, BandHigh},
		{RestoreBand, "restore", day, BandMedium},
		{RestoreBand, "restore", 7*day - 1, BandMedium},
		{RestoreBand, "restore", 7 * day, BandLow},
	}
	for _, c := range dtests {
		if got := c.f(c.d); got != c.want {
			t.Errorf("%s band of %s = %q, want %q", c.name, c.d, got, c.want)
		}
	}
	ftests := []struct {
		f    func(float64) string
		name string
		v    float64
		want string
	}{
		{DeployFrequencyBand, "frequency", 5, BandElite},
		{DeployFrequencyBand, "frequency", 1, BandElite},
		{DeployFrequencyBand, "frequency", 0.99, BandHigh},
		{DeployFrequencyBand, "frequency", 1.0 / 7, BandHigh},
		{DeployFrequencyBand, "frequency", 0.14, BandMedium},
		{DeployFrequencyBand, "frequency", 1.0 / 30, BandMedium},
		{DeployFrequencyBand, "frequency", 0.03, BandLow},
		{DeployFrequencyBand, "frequency", 0, BandLow},
		{ChangeFailureBand, "failure", 0, BandElite},
		{ChangeFailureBand, "failure", 0.15, BandElite},
		{ChangeFailureBand, "failure", 0.16, BandHigh},
		{ChangeFailureBand, "failure", 0.30, BandHigh},
		{ChangeFailureBand, "failure", 0.45, BandMedium},
		{ChangeFailureBand, "failure", 0.46, BandLow},
		{ChangeFailureBand, "failure", 1, BandLow},
	}
	for _, c := range ftests {
		if got := c.f(c.v); got != c.want {
			t.Errorf("%s band of %v = %q, want %q", c.name, c.v, got, c.want)
		}
	}
	for _, c := range []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"", ""}, ""},
		{[]string{BandElite, ""}, BandElite},
		{[]string{BandElite, BandLow, BandHigh}, BandLow},
		{[]string{BandHigh, BandMedium, BandElite}, BandMedium},
		{[]string{"bogus", BandHigh}, BandHigh},
	} {
		if got := Worst(c.in...); got != c.want {
			t.Errorf("Worst(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Records read back from storage may have nil or odd fields; nothing
// panics and nothing nonsensical is counted.
func TestComputeOddRecords(t *testing.T) {
	hist := ServiceHistory{
		Service:  "s",
		Releases: []*v1.Release{nil, {}, rel("v1", &timestamppb.Timestamp{Seconds: math.MaxInt64}, nil)},
		Rollouts: []*v1.Rollout{
			nil,
			{},
			{State: succeeded, FinishedAt: at(day)}, // no hosts
			{State: succeeded, FinishedAt: at(day), Waves: []*v1.Wave{nil, {Hosts: []*v1.HostProgress{nil}}}}, // one nil host
			{State: failed, FinishedAt: at(day), ToVersion: "v1", Waves: []*v1.Wave{{Hosts: []*v1.HostProgress{{}}}}},
			{State: v1.RolloutState(99), FinishedAt: at(day), Waves: []*v1.Wave{{Hosts: []*v1.HostProgress{{}}}}},
		},
	}
	got := Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0]
	if got.GetRollouts() != 2 || got.GetSucceeded() != 1 || got.GetFailed() != 1 {
		t.Errorf("odd records: rollouts %d succeeded %d failed %d, want 2 1 1", got.GetRollouts(), got.GetSucceeded(), got.GetFailed())
	}
}

func cloneHistory(h ServiceHistory) ServiceHistory {
	out := ServiceHistory{Service: h.Service}
	for _, r := range h.Releases {
		out.Releases = append(out.Releases, proto.Clone(r).(*v1.Release))
	}
	for _, r := range h.Rollouts {
		out.Rollouts = append(out.Rollouts, proto.Clone(r).(*v1.Rollout))
	}
	return out
}

func equalHistory(a, b ServiceHistory) bool {
	return a.Service == b.Service &&
		slices.EqualFunc(a.Releases, b.Releases, func(x, y *v1.Release) bool { return proto.Equal(x, y) }) &&
		slices.EqualFunc(a.Rollouts, b.Rollouts, func(x, y *v1.Rollout) bool { return proto.Equal(x, y) })
}

// A config rollout (v1 again with spec 2) is a deployment: counted, its
// failure in the change failure rate, its rollout time measured; it has no
// lead time (the release's commit is not its change). A removal is not a
// deployment.
func TestComputeConfigAndRemoval(t *testing.T) {
	deploy := ro("1", "", "v1", succeeded, at(1*day), at(1*day), at(1*day+m),
		wave(at(1*day), at(1*day+m), nil, at(1*day+m)))
	deploy.SpecRevision = 1
	config := ro("2", "v1", "v1", succeeded, at(2*day), at(2*day), at(2*day+3*m),
		wave(at(2*day), at(2*day+3*m), nil, at(2*day+3*m)))
	config.FromSpecRevision, config.SpecRevision = 1, 2
	configFailed := ro("3", "v1", "v1", failed, at(3*day), at(3*day), at(3*day+m), oneHost(at(3*day)))
	configFailed.FromSpecRevision, configFailed.SpecRevision = 2, 3
	removal := ro("4", "v1", "", succeeded, at(4*day), at(4*day), at(4*day+m), wave(at(4*day), at(4*day+m), nil, at(4*day+m)))
	removal.Remove = true
	hist := ServiceHistory{
		Service:  "s",
		Releases: []*v1.Release{rel("v1", at(1*day-hr), at(1*day))},
		Rollouts: []*v1.Rollout{deploy, config, configFailed, removal},
	}
	got := Compute([]ServiceHistory{hist}, now, 30*day, false).GetServices()[0]
	if got.GetRollouts() != 3 || got.GetSucceeded() != 2 || got.GetFailed() != 1 || got.GetConfigRollouts() != 2 {
		t.Errorf("counts: %d rollouts, %d succeeded, %d failed, %d config; want 3, 2, 1, 2",
			got.GetRollouts(), got.GetSucceeded(), got.GetFailed(), got.GetConfigRollouts())
	}
	checkDur(t, "lead_time (the release's deployment only)", got.GetLeadTime(), dur{1, hr + m, hr + m})
	checkDur(t, "release_to_start (the release's deployment only)", got.GetReleaseToStart(), dur{1, 0, 0})
	checkDur(t, "rollout (both)", got.GetRollout(), dur{2, m, 3 * m})
}

// TestComputeDaily: the rollouts counted on each day of a window in one
// Compute are what windows of k and k-1 days tell apart (how the
// dashboard's chart was made: thirty calls), for every service and the
// fleet; a service with nothing in the window gets its days, all zero.
func TestComputeDaily(t *testing.T) {
	in := []ServiceHistory{webHistory(), dbHistory(), apiHistory(), {Service: "idle"}}
	const days = 30
	daily := Compute(in, now, days*day, true)
	all := append(append([]*v1.DeployStats{}, daily.GetServices()...), daily.GetFleet())
	prev := map[string][2]uint32{}
	for k := 1; k <= days; k++ {
		cum := Compute(in, now, time.Duration(k)*day, false)
		for i, s := range append(append([]*v1.DeployStats{}, cum.GetServices()...), cum.GetFleet()) {
			ok, bad := s.GetSucceeded(), s.GetFailed()+s.GetRolledBack()
			p := prev[s.GetService()]
			if n := len(all[i].GetDays()); n != days {
				t.Fatalf("%q: %d days, want %d", s.GetService(), n, days)
			}
			got := all[i].GetDays()[k-1]
			if got.GetSucceeded() != ok-p[0] || got.GetFailed() != bad-p[1] {
				t.Errorf("%q day %d: %d succeeded, %d failed; windows of %d and %d days say %d, %d",
					s.GetService(), k, got.GetSucceeded(), got.GetFailed(), k, k-1, ok-p[0], bad-p[1])
			}
			prev[s.GetService()] = [2]uint32{ok, bad}
		}
	}
	var total uint32
	for _, d := range daily.GetFleet().GetDays() {
		total += d.GetSucceeded() + d.GetFailed()
	}
	if f := daily.GetFleet(); total != f.GetSucceeded()+f.GetFailed()+f.GetRolledBack() || total == 0 {
		t.Fatalf("the fleet's days hold %d rollouts, its window %d", total, f.GetSucceeded()+f.GetFailed()+f.GetRolledBack())
	}
	if len(Compute(in, now, days*day, false).GetFleet().GetDays()) != 0 {
		t.Fatal("days without asking for them")
	}
}
