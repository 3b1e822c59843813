package stats

import (
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// DefaultSince is the window Compute uses when since <= 0.
const DefaultSince = 30 * 24 * time.Hour

const day = 24 * time.Hour

// ServiceHistory is what the coordinator keeps about one service: its
// releases and its rollouts (any order), and its events (unused; may be
// nil).
type ServiceHistory struct {
	Service  string
	Releases []*v1.Release
	Rollouts []*v1.Rollout
	Events   []*v1.Event
}

// MaxDailySince is the longest window whose days Compute counts (a count
// per day of it for every service and the fleet).
const MaxDailySince = 366 * day

// Compute returns the figures of every service in `in` (sorted by name;
// histories with the same name are merged) and of the fleet, over the window
// [now-since, now], as defined in the package documentation; with daily,
// also the rollouts that ended on each day of it (DeployStats.days). It
// does not modify its input.
func Compute(in []ServiceHistory, now time.Time, since time.Duration, daily bool) *v1.GetStatsResponse {
	if since <= 0 {
		since = DefaultSince
	}
	w := window{from: now.Add(-since), to: now, since: since}
	if daily {
		w.days = int((min(since, MaxDailySince) + day - 1) / day)
	}

	byName := map[string]*ServiceHistory{}
	var names []string
	for _, h := range in {
		m, ok := byName[h.Service]
		if !ok {
			m = &ServiceHistory{Service: h.Service}
			byName[h.Service] = m
			names = append(names, h.Service)
		}
		m.Releases = append(m.Releases, h.Releases...)
		m.Rollouts = append(m.Rollouts, h.Rollouts...)
	}
	slices.Sort(names)

	resp := &v1.GetStatsResponse{
		From: timestamppb.New(w.from),
		To:   timestamppb.New(w.to),
	}
	fleet := newAcc(w)
	for _, name := range names {
		a := collect(byName[name], w)
		resp.Services = append(resp.Services, a.result(name, w))
		fleet.add(a)
	}
	resp.Fleet = fleet.result("", w)
	return resp
}

type window struct {
	from, to time.Time
	since    time.Duration
	// days is how many days DeployStats.days has (0: none asked).
	days int
}

// dayOf is the index in DeployStats.days of a rollout that ended at end,
// inside the window: 0 for the last 24 hours (a day's window holds its
// older end, as the window does: [to-(i+1) days, to-i days)).
func (w window) dayOf(end time.Time) int {
	i := int((w.to.Sub(end)+day-1)/day) - 1
	return min(max(i, 0), w.days-1)
}

func (w window) contains(t time.Time) bool { return !t.Before(w.from) && !t.After(w.to) }

// acc accumulates the counts and samples of one service or the fleet.
type acc struct {
	succeeded, failed, rolledBack, superseded uint32
	config                                    uint32
	deploys                                   int
	lead, commitToRelease, releaseToStart     []time.Duration
	rollout, bake, restore                    []time.Duration
	// first is the created_at of the earliest rollout; hasFirst is false
	// when there is no rollout at all.
	first    time.Time
	hasFirst bool
	// days counts the rollouts that ended on each day (window.days).
	days []*v1.DayCount
}

// newAcc is an empty accumulator for window w (its days counted when w
// asks for them).
func newAcc(w window) *acc {
	a := &acc{days: make([]*v1.DayCount, w.days)}
	for i := range a.days {
		a.days[i] = &v1.DayCount{}
	}
	return a
}

func (a *acc) add(b *acc) {
	a.succeeded += b.succeeded
	a.failed += b.failed
	a.rolledBack += b.rolledBack
	a.superseded += b.superseded
	a.config += b.config
	a.deploys += b.deploys
	a.lead = append(a.lead, b.lead...)
	a.commitToRelease = append(a.commitToRelease, b.commitToRelease...)
	a.releaseToStart = append(a.releaseToStart, b.releaseToStart...)
	a.rollout = append(a.rollout, b.rollout...)
	a.bake = append(a.bake, b.bake...)
	a.restore = append(a.restore, b.restore...)
	if b.hasFirst && (!a.hasFirst || b.first.Before(a.first)) {
		a.first, a.hasFirst = b.first, true
	}
	for i, d := range b.days {
		a.days[i].Succeeded += d.GetSucceeded()
		a.days[i].Failed += d.GetFailed()
	}
}

func (a *acc) result(service string, w window) *v1.DeployStats {
	ds := &v1.DeployStats{
		Service:         service,
		Rollouts:        a.succeeded + a.failed + a.rolledBack + a.superseded,
		Succeeded:       a.succeeded,
		Failed:          a.failed,
		RolledBack:      a.rolledBack,
		Superseded:      a.superseded,
		ConfigRollouts:  a.config,
		LeadTime:        durStats(a.lead),
		CommitToRelease: durStats(a.commitToRelease),
		ReleaseToStart:  durStats(a.releaseToStart),
		Rollout:         durStats(a.rollout),
		Bake:            durStats(a.bake),
		TimeToRestore:   durStats(a.restore),
		Days:            a.days,
	}
	if a.hasFirst {
		span := w.since
		if age := max(w.to.Sub(a.first), day); age < span {
			span = age
		}
		ds.DeploysPerDay = float64(a.deploys) / (float64(span) / float64(day))
		ds.DeployFrequencyBand = DeployFrequencyBand(ds.DeploysPerDay)
	}
	if n := a.succeeded + a.failed + a.rolledBack; n > 0 {
		ds.ChangeFailureRate = float64(a.failed+a.rolledBack) / float64(n)
		ds.ChangeFailureBand = ChangeFailureBand(ds.ChangeFailureRate)
	}
	if len(a.lead) > 0 {
		ds.LeadTimeBand = LeadTimeBand(ds.GetLeadTime().GetMedian().AsDuration())
	}
	if len(a.restore) > 0 {
		ds.RestoreBand = RestoreBand(ds.GetTimeToRestore().GetMedian().AsDuration())
	}
	ds.OverallBand = Worst(ds.LeadTimeBand, ds.DeployFrequencyBand, ds.ChangeFailureBand, ds.RestoreBand)
	return ds
}

// durStats is the count, median and p90 (nearest rank) of a sample.
func durStats(s []time.Duration) *v1.DurationStats {
	out := &v1.DurationStats{Count: uint32(len(s))}
	if len(s) == 0 {
		return out
	}
	sorted := slices.Clone(s)
	slices.Sort(sorted)
	out.Median = durationpb.New(nearestRank(sorted, 50))
	out.P90 = durationpb.New(nearestRank(sorted, 90))
	return out
}

// nearestRank is the ceil(p/100 * n)-th smallest value of sorted (n > 0).
func nearestRank(sorted []time.Duration, p int) time.Duration {
	k := (p*len(sorted) + 99) / 100
	k = min(max(k, 1), len(sorted))
	return sorted[k-1]
}

// collect computes one service's counts and samples.
func collect(h *ServiceHistory, w window) *acc {
	a := newAcc(w)
	releases := map[string]*v1.Release{}
	for _, r := range h.Releases {
		if r == nil {
			continue
		}
		if _, dup := releases[r.GetVersion()]; !dup {
			releases[r.GetVersion()] = r
		}
	}
	var ros []*v1.Rollout
	for _, r := range h.Rollouts {
		if r != nil {
			ros = append(ros, r)
		}
	}
	slices.SortStableFunc(ros, func(x, y *v1.Rollout) int {
		if c := seqTime(x).Compare(seqTime(y)); c != 0 {
			return c
		}
		return strings.Compare(x.GetId(), y.GetId())
	})
	for _, r := range ros {
		if t := seqTime(r); !t.IsZero() && (!a.hasFirst || t.Before(a.first)) {
			a.first, a.hasFirst = t, true
		}
	}

	undoneBy := rolledBack(ros)
	for i, r := range ros {
		if r.GetRollback() || r.GetRemove() || !hasHosts(r) {
			continue
		}
		end, ok := ts(r.GetFinishedAt())
		if !ok || !w.contains(end) {
			continue
		}
		rel := releases[r.GetToVersion()]
		if isConfig(r) {
			a.config++
			rel = nil // the release's commit is not this change's
		}
		rb, undone := undoneBy[i]
		var day *v1.DayCount
		if w.days > 0 {
			day = a.days[w.dayOf(end)]
		}
		switch r.GetState() {
		case v1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
			a.deploys++
			if undone {
				a.rolledBack++
				a.restoreAfterRollback(ros, rb)
				countDay(day, false)
			} else {
				a.succeeded++
				countDay(day, true)
			}
			a.leadTime(r, rel)
		case v1.RolloutState_ROLLOUT_STATE_FAILED:
			a.failed++
			countDay(day, false)
			start := end
			if t, ok := ts(r.GetFailedAt()); ok {
				start = t
			}
			if t, ok := ts(r.GetRestoredAt()); ok {
				a.restore = append(a.restore, span(start, t))
			} else if t, ok := nextSucceeded(ros, i+1, start); ok {
				a.restore = append(a.restore, span(start, t))
			}
		case v1.RolloutState_ROLLOUT_STATE_SUPERSEDED:
			if undone {
				a.rolledBack++
				a.restoreAfterRollback(ros, rb)
				countDay(day, false)
			} else {
				a.superseded++
			}
		}
	}
	return a
}

// countDay counts a rollout on its day, if days are counted.
func countDay(d *v1.DayCount, succeeded bool) {
	switch {
	case d == nil:
	case succeeded:
		d.Succeeded++
	default:
		d.Failed++
	}
}

// restoreAfterRollback adds the time from the rollback ros[rb] being created
// to the first SUCCEEDED rollout from it on, if any.
func (a *acc) restoreAfterRollback(ros []*v1.Rollout, rb int) {
	start, ok := ts(ros[rb].GetCreatedAt())
	if !ok {
		if start, ok = ts(ros[rb].GetStartedAt()); !ok {
			return
		}
	}
	if t, ok := nextSucceeded(ros, rb, start); ok {
		a.restore = append(a.restore, span(start, t))
	}
}

// nextSucceeded is the finished_at of the first SUCCEEDED rollout with hosts
// at index >= from that finished at or after t.
func nextSucceeded(ros []*v1.Rollout, from int, t time.Time) (time.Time, bool) {
	for _, r := range ros[from:] {
		if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || !hasHosts(r) {
			continue
		}
		if f, ok := ts(r.GetFinishedAt()); ok && !f.Before(t) {
			return f, true
		}
	}
	return time.Time{}, false
}

// rolledBack maps the index of every non-rollback rollout undone by a
// rollback to the index of that rollback (ros in history order).
func rolledBack(ros []*v1.Rollout) map[int]int {
	out := map[int]int{}
	lastOK := -1 // newest SUCCEEDED rollout so far
	for i, r := range ros {
		if r.GetRollback() {
			if i > 0 {
				if p := ros[i-1]; !p.GetRollback() && p.GetState() == v1.RolloutState_ROLLOUT_STATE_SUPERSEDED {
					out[i-1] = i
				}
			}
			if lastOK >= 0 {
				p := ros[lastOK]
				if _, done := out[lastOK]; !done && !p.GetRollback() &&
					r.GetFromVersion() == p.GetToVersion() && r.GetToVersion() != p.GetToVersion() {
					out[lastOK] = i
				}
			}
		}
		if r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			lastOK = i
		}
	}
	return out
}

// isConfig reports whether r is a config rollout: the stable release
// rolled out again with another spec (as rollout.IsConfig).
func isConfig(r *v1.Rollout) bool {
	return !r.GetRollback() && !r.GetRemove() && r.GetToVersion() != "" &&
		r.GetFromVersion() == r.GetToVersion() && r.GetSpecRevision() != r.GetFromSpecRevision()
}

// leadTime adds a completed deployment's lead time and breakdown (rel nil:
// its rollout and bake only).
func (a *acc) leadTime(r *v1.Rollout, rel *v1.Release) {
	live, ok := liveAt(r)
	if !ok {
		return
	}
	start, ok := ts(r.GetStartedAt())
	if !ok {
		if start, ok = ts(r.GetCreatedAt()); !ok {
			start = live
		}
	}
	a.rollout = append(a.rollout, span(start, live))
	a.bake = append(a.bake, bakeTime(r, start, live))

	created, hasCreated := ts(rel.GetCreatedAt())
	commit, hasCommit := ts(rel.GetCommitTime())
	if hasCreated {
		a.releaseToStart = append(a.releaseToStart, span(created, start))
	}
	if hasCommit {
		a.lead = append(a.lead, span(commit, live))
		if hasCreated {
			a.commitToRelease = append(a.commitToRelease, span(commit, created))
		}
	}
}

// liveAt is when the last host became healthy on r's release: the latest
// host done_at, or finished_at when no host records one.
func liveAt(r *v1.Rollout) (time.Time, bool) {
	var live time.Time
	found := false
	for _, wv := range r.GetWaves() {
		if t, ok := lastHostDone(r, wv); ok && (!found || t.After(live)) {
			live, found = t, true
		}
	}
	if found {
		return live, true
	}
	return ts(r.GetFinishedAt())
}

// lastHostDone is the latest done_at of wave wv's hosts, or of its
// summary once r's hosts were compacted (rollout.Compact).
func lastHostDone(r *v1.Rollout, wv *v1.Wave) (time.Time, bool) {
	if r.GetHostsCompacted() {
		return ts(wv.GetLastHostDoneAt())
	}
	var last time.Time
	found := false
	for _, h := range wv.GetHosts() {
		if t, ok := ts(h.GetDoneAt()); ok && (!found || t.After(last)) {
			last, found = t, true
		}
	}
	return last, found
}

// bakeTime sums r's waves' bake intervals clipped to [lo, hi].
func bakeTime(r *v1.Rollout, lo, hi time.Time) time.Duration {
	bake := r.GetPolicy().GetBake().AsDuration()
	if !r.GetPolicy().GetBake().IsValid() {
		bake = 0
	}
	var total time.Duration
	for _, wv := range r.GetWaves() {
		until, ok := ts(wv.GetBakeUntil())
		if !ok {
			continue
		}
		var from time.Time
		if bake > 0 {
			from = until.Add(-bake)
		} else if from, ok = lastHostDone(r, wv); !ok {
			continue
		}
		to, ok := ts(wv.GetDoneAt())
		if !ok {
			if to, ok = ts(r.GetFinishedAt()); !ok {
				continue
			}
		}
		if from.Before(lo) {
			from = lo
		}
		if to.After(hi) {
			to = hi
		}
		if to.After(from) {
			total += to.Sub(from)
		}
	}
	return total
}

// hasHosts reports whether r planned any host: its waves' hosts, or their
// summaries' counts once compacted (rollout.Compact).
func hasHosts(r *v1.Rollout) bool {
	for _, wv := range r.GetWaves() {
		if len(wv.GetHosts()) > 0 || (r.GetHostsCompacted() && wv.GetHostCount() > 0) {
			return true
		}
	}
	return false
}

// seqTime orders a service's rollouts: created_at, else started_at, else
// finished_at.
func seqTime(r *v1.Rollout) time.Time {
	for _, t := range []*timestamppb.Timestamp{r.GetCreatedAt(), r.GetStartedAt(), r.GetFinishedAt()} {
		if v, ok := ts(t); ok {
			return v
		}
	}
	return time.Time{}
}

// ts is t as a time, and whether it is set and valid.
func ts(t *timestamppb.Timestamp) (time.Time, bool) {
	if t == nil || !t.IsValid() {
		return time.Time{}, false
	}
	return t.AsTime(), true
}

// span is to - from, or 0 when negative.
func span(from, to time.Time) time.Duration {
	if d := to.Sub(from); d > 0 {
		return d
	}
	return 0
}
