package stats

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// compacted is h with every ended rollout's hosts compacted
// (rollout.Compact, as the leader does to rollouts beyond the newest
// --keep-rollout-hosts); rollouts in flight keep theirs.
func compacted(h ServiceHistory) ServiceHistory {
	out := ServiceHistory{Service: h.Service, Releases: h.Releases}
	for _, r := range h.Rollouts {
		if r != nil && rollout.Terminal(r) {
			r = rollout.Compact(r)
		}
		out.Rollouts = append(out.Rollouts, r)
	}
	return out
}

// randomHistory is a service's history of n rollouts drawn by rnd: clean
// deployments, failures (restored or not), rollbacks (after a success or
// of a rollout in flight, superseded), supersedes, config rollouts,
// removals, bake policies with and without bake_until, waves whose hosts
// are done at various times or never, and a rollout in flight at the end.
func randomHistory(rnd *rand.Rand, name string, n int) ServiceHistory {
	h := ServiceHistory{Service: name}
	tm := t0.Add(-10 * day)
	stable := ""
	for i := range n {
		tm = tm.Add(time.Duration(rnd.IntN(48*60)) * m)
		ver := fmt.Sprintf("v%d", i)
		if rnd.IntN(3) > 0 {
			h.Releases = append(h.Releases, rel(ver, timestamppb.New(tm.Add(-time.Duration(rnd.IntN(600))*m)), timestamppb.New(tm.Add(-time.Duration(rnd.IntN(30))*m))))
		}
		r := &v1.Rollout{Id: fmt.Sprintf("%06d", i+1), FromVersion: stable, ToVersion: ver, CreatedAt: timestamppb.New(tm)}
		switch rnd.IntN(8) {
		case 0: // rollback to the stable release
			r.Rollback, r.ToVersion = true, stable
		case 1: // config rollout
			r.ToVersion, r.FromSpecRevision, r.SpecRevision = stable, int64(i), int64(i+1)
		case 2:
			if rnd.IntN(3) == 0 {
				r.Remove, r.ToVersion = true, ""
			}
		}
		if rnd.IntN(2) == 0 {
			r.Policy = &v1.RolloutPolicy{Bake: durationpb.New(time.Duration(rnd.IntN(20)) * m)}
		}
		if rnd.IntN(5) > 0 {
			r.StartedAt = timestamppb.New(tm.Add(time.Duration(rnd.IntN(5)) * m))
		}
		wt := tm
		for w := range 1 + rnd.IntN(4) {
			wv := &v1.Wave{Index: uint32(w), StartedAt: timestamppb.New(wt)}
			for k := range rnd.IntN(6) {
				hp := &v1.HostProgress{HostId: fmt.Sprintf("h%d", k)}
				if rnd.IntN(4) > 0 {
					hp.DoneAt = timestamppb.New(wt.Add(time.Duration(rnd.IntN(90)) * m))
				}
				wv.Hosts = append(wv.Hosts, hp)
			}
			wt = wt.Add(time.Duration(30+rnd.IntN(90)) * m)
			if rnd.IntN(2) == 0 {
				wv.BakeUntil = timestamppb.New(wt.Add(-time.Duration(rnd.IntN(20)) * m))
			}
			if rnd.IntN(4) > 0 {
				wv.DoneAt = timestamppb.New(wt)
			}
			r.Waves = append(r.Waves, wv)
		}
		end := wt.Add(time.Duration(rnd.IntN(60)) * m)
		switch {
		case i == n-1 && rnd.IntN(2) == 0:
			r.State = running
		case rnd.IntN(4) == 0:
			r.State = failed
			r.FailedAt = timestamppb.New(end.Add(-time.Duration(rnd.IntN(10)) * m))
			if rnd.IntN(2) == 0 {
				r.RestoredAt = timestamppb.New(end.Add(time.Duration(rnd.IntN(60)) * m))
			}
		case rnd.IntN(5) == 0:
			r.State = superseded
		default:
			r.State = succeeded
			stable = r.GetToVersion()
		}
		if r.GetState() != running {
			r.FinishedAt = timestamppb.New(end)
		}
		tm = end
		h.Rollouts = append(h.Rollouts, r)
	}
	return h
}

// TestComputeSameAfterCompaction: a history gives the same figures (every
// count, sample, band and day) before and after its ended rollouts' hosts
// are compacted, over the known histories and many drawn ones (rollbacks,
// failures, config rollouts, removals, bake), for windows of a day to
// over a year, daily or not.
func TestComputeSameAfterCompaction(t *testing.T) {
	cfg := ro("7", "v1", "v1", succeeded, at(2*day), at(2*day), at(2*day+3*m),
		wave(at(2*day), at(2*day+3*m), at(2*day+5*m), at(2*day+m), at(2*day+3*m)))
	cfg.FromSpecRevision, cfg.SpecRevision = 1, 2
	histories := [][]ServiceHistory{
		{webHistory(), apiHistory(), dbHistory()},
		{{Service: "cfg", Rollouts: []*v1.Rollout{bake5(cfg)}}},
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		histories = append(histories, []ServiceHistory{randomHistory(rnd, "a", 1+rnd.IntN(40)), randomHistory(rnd, fmt.Sprintf("b%d", i), 1+rnd.IntN(10))})
	}
	counted := 0
	for hi, in := range histories {
		var after []ServiceHistory
		before := make([]ServiceHistory, len(in))
		for i, h := range in {
			before[i] = cloneHistory(h)
			after = append(after, compacted(h))
			for _, r := range after[i].Rollouts {
				for _, w := range r.GetWaves() {
					if r.GetHostsCompacted() && len(w.GetHosts()) > 0 {
						t.Fatalf("history %d: rollout %s compacted with hosts", hi, r.GetId())
					}
				}
			}
		}
		for _, since := range []time.Duration{day, 7 * day, 30 * day, 90 * day, MaxDailySince, 400 * day} {
			for _, daily := range []bool{false, true} {
				want := Compute(before, now, since, daily)
				got := Compute(after, now, since, daily)
				if !proto.Equal(got, want) {
					t.Fatalf("history %d, window %s, daily %v: after compaction\n%v\nbefore\n%v", hi, since, daily, got, want)
				}
				counted += int(want.GetFleet().GetRollouts())
			}
		}
		for i := range in {
			if !equalHistory(before[i], in[i]) {
				t.Fatalf("history %d: compaction changed its input", hi)
			}
		}
	}
	if counted < 1000 {
		t.Fatalf("only %d rollouts counted over every history and window: the histories test little", counted)
	}
}

// retained is h without the rollouts the leader deletes at now with the
// default retention (rollout.Retain, 400 days; svc's status as the last
// rollout left it).
func retained(h ServiceHistory, svc *v1.Service, now time.Time) ServiceHistory {
	ret := rollout.Retain(svc, h.Rollouts, 0, now.Add(-400*day))
	out := ServiceHistory{Service: h.Service, Releases: h.Releases}
	for _, r := range h.Rollouts {
		if !slices.Contains(ret.Delete, r) {
			out.Rollouts = append(out.Rollouts, r)
		}
	}
	return out
}

// TestComputeSameAfterDeletion: the figures of any window up to the
// retention are the same once the rollouts that finished before it are
// deleted. Before: the service's first rollout went with them, and the
// deploy frequency of a service older than the window was counted over
// the age of its oldest rollout kept instead of over the window (2
// deployments in 30 days said 0.1 a day, as if the service were 20 days
// old). A known case, and drawn histories part of which is over a year
// old.
func TestComputeSameAfterDeletion(t *testing.T) {
	h := ServiceHistory{Service: "web", Rollouts: []*v1.Rollout{
		ro("000001", "", "v1", succeeded, at(-500*day), at(-500*day), at(-500*day+hr), wave(at(-500*day), at(-500*day+hr), nil, at(-500*day+hr))),
		ro("000002", "v1", "v2", succeeded, at(-450*day), at(-450*day), at(-450*day+hr), wave(at(-450*day), at(-450*day+hr), nil, at(-450*day+hr))),
		ro("000003", "v2", "v3", succeeded, at(10*day), at(10*day), at(10*day+hr), wave(at(10*day), at(10*day+hr), nil, at(10*day+hr))),
		ro("000004", "v3", "v4", succeeded, at(20*day), at(20*day), at(20*day+hr), wave(at(20*day), at(20*day+hr), nil, at(20*day+hr))),
	}}
	svc := &v1.Service{Status: &v1.ServiceStatus{StableVersion: "v4", LastRolloutId: "000004"}}
	after := retained(h, svc, now)
	if len(after.Rollouts) == len(h.Rollouts) {
		t.Fatal("nothing deleted: the case tests nothing")
	}
	for _, since := range []time.Duration{day, 7 * day, 30 * day, 90 * day, MaxDailySince} {
		want := Compute([]ServiceHistory{h}, now, since, false)
		got := Compute([]ServiceHistory{after}, now, since, false)
		if !proto.Equal(got, want) {
			t.Errorf("window %s: after deletion\n%v\nbefore\n%v", since, got.GetFleet(), want.GetFleet())
		}
	}
	// Drawn histories whose first k rollouts happened 400 to 800 days
	// earlier, at three nows.
	rnd := rand.New(rand.NewPCG(3, 4))
	deleted := 0
	for hi := range 300 {
		n := 2 + rnd.IntN(40)
		h := randomHistory(rnd, "a", n)
		k := rnd.IntN(n)
		shiftRollouts(h.Rollouts[:k], -time.Duration(400+rnd.IntN(400))*day)
		stable := ""
		for _, r := range h.Rollouts {
			if r.GetState() == succeeded {
				stable = r.GetToVersion()
			}
		}
		svc := &v1.Service{Status: &v1.ServiceStatus{StableVersion: stable, LastRolloutId: h.Rollouts[n-1].GetId()}}
		for _, at := range []time.Time{now, now.Add(30 * day), now.Add(200 * day)} {
			after := retained(h, svc, at)
			deleted += n - len(after.Rollouts)
			for _, since := range []time.Duration{day, 30 * day, 90 * day, MaxDailySince} {
				want := Compute([]ServiceHistory{h}, at, since, true)
				got := Compute([]ServiceHistory{after}, at, since, true)
				if !proto.Equal(got, want) {
					t.Fatalf("history %d (%d shifted), now %s, window %s: %d of %d kept\nafter %v\nbefore %v", hi, k, at, since, len(after.Rollouts), n, got.GetFleet(), want.GetFleet())
				}
			}
		}
	}
	if deleted < 1000 {
		t.Fatalf("only %d rollouts deleted over every history: the histories test little", deleted)
	}
}

// shiftRollouts moves every time of the rollouts by d.
func shiftRollouts(ros []*v1.Rollout, d time.Duration) {
	shift := func(ts ...**timestamppb.Timestamp) {
		for _, t := range ts {
			if *t != nil {
				*t = timestamppb.New((*t).AsTime().Add(d))
			}
		}
	}
	for _, r := range ros {
		shift(&r.CreatedAt, &r.StartedAt, &r.FinishedAt, &r.FailedAt, &r.RestoredAt)
		for _, w := range r.GetWaves() {
			shift(&w.StartedAt, &w.DoneAt, &w.BakeUntil)
			for _, hp := range w.GetHosts() {
				shift(&hp.DoneAt)
			}
		}
	}
}
