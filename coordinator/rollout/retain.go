package rollout

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Compact returns a copy of the ended rollout r without its waves' hosts:
// each wave keeps a summary instead (Wave.host_count, and
// Wave.last_host_done_at: the latest done_at of its hosts, unset when none
// recorded one), and hosts_compacted is set. The DORA figures
// (coordinator/stats) read the summary in place of the hosts and come out
// the same. A rollout already compacted is returned as it is. r is not
// modified.
func Compact(r *v1.Rollout) *v1.Rollout {
	if r.GetHostsCompacted() {
		return r
	}
	c := proto.Clone(r).(*v1.Rollout)
	c.HostsCompacted = true
	for _, w := range c.GetWaves() {
		var last *timestamppb.Timestamp
		for _, h := range w.GetHosts() {
			if d := h.GetDoneAt(); d.IsValid() && (last == nil || d.AsTime().After(last.AsTime())) {
				last = d
			}
		}
		w.HostCount = uint32(len(w.GetHosts()))
		w.LastHostDoneAt = last
		w.Hosts = nil
	}
	return c
}

// WaveHosts is how many hosts wave w of r planned: its hosts, or its
// summary's count once r's hosts were compacted.
func WaveHosts(r *v1.Rollout, w *v1.Wave) int {
	if r.GetHostsCompacted() {
		return int(w.GetHostCount())
	}
	return len(w.GetHosts())
}

// RolloutHosts is how many hosts r planned, over its waves (WaveHosts).
func RolloutHosts(r *v1.Rollout) int {
	n := 0
	for _, w := range r.GetWaves() {
		n += WaveHosts(r, w)
	}
	return n
}

// CompactedNote says, for display, that r's host detail was pruned and
// how many hosts it had ("" when r keeps its hosts).
func CompactedNote(r *v1.Rollout) string {
	if !r.GetHostsCompacted() {
		return ""
	}
	n, s := RolloutHosts(r), "s"
	if n == 1 {
		s = ""
	}
	return fmt.Sprintf("host detail pruned (an old rollout, beyond the newest --keep-rollout-hosts): %d host%s", n, s)
}

// Retention is what the leader prunes of a service's rollouts
// (coordinator/leader_retain.go).
type Retention struct {
	// Compact: ended rollouts older than the service's newest KeepHosts
	// whose hosts are still held (Compact them).
	Compact []*v1.Rollout
	// Delete: ended rollouts that finished before the retention's cutoff
	// and that nothing reads any more.
	Delete []*v1.Rollout
}

// Retain says which of svc's rollouts (oldest first, as the mirror lists
// them) to compact and which to delete: ended rollouts older than the
// newest keepHosts are compacted (keepHosts <= 0: none), and ended
// rollouts that finished before deleteBefore are deleted (zero: none).
//
// Neither ever touches a rollout in flight, the service's newest rollout
// (nor the one its status names: the hub, Desired, Restored, the stage and
// peer plans, comparisons and alerts read its hosts; every other reader of
// hosts reads only that one), nor, when the newest are removals of hosts
// a selector left out (ended, or one in flight, which will end), those and
// the rollout before them (the one Decide is given: Deciding, walked back
// by id). Deletion keeps, besides, what RollbackTarget
// reads of older rollouts: the newest SUCCEEDED rollout, the newest
// SUCCEEDED one to a release other than the stable one (the default
// rollback target), the newest removal of the whole service (where the
// current incarnation's history starts), and, for every release that a
// rollout ever FAILED on, the newest ended rollout to it (whether a
// rollback onto it is refused); and the service's first rollout, the
// earliest created (the stats' deploy frequency of a service younger than
// its window counts from it).
func Retain(svc *v1.Service, rollouts []*v1.Rollout, keepHosts int, deleteBefore time.Time) Retention {
	var out Retention
	n := len(rollouts)
	if n == 0 {
		return out
	}
	current := svc.GetStatus().GetLastRolloutId()
	// The rollout Decide is given (Deciding) when the newest ones are
	// removals of hosts a selector left out: they and the one before them,
	// walked back by id (PrevID) as the readers walk, from the newest and
	// from the one the status names, must all be there. A removal in
	// flight counts as ended: the walk passes it once it ends.
	byID := make(map[string]int, n)
	for i, r := range rollouts {
		byID[r.GetId()] = i
	}
	chain := map[int]bool{}
	walk := func(i int) {
		for ok := true; ok && !chain[i]; i, ok = byID[PrevID(rollouts[i])] {
			chain[i] = true
			if !rollouts[i].GetLeft() {
				return
			}
		}
	}
	walk(n - 1)
	if i, ok := byID[current]; ok {
		walk(i)
	}
	protected := func(i int) bool {
		r := rollouts[i]
		return chain[i] || r.GetId() == current || !Terminal(r)
	}
	keep := map[int]bool{}
	stable := svc.GetStatus().GetStableVersion()
	lastOK, lastOther, lastRemoval := -1, -1, -1
	failed := map[string]bool{}
	newestTo := map[string]int{}
	for i, r := range rollouts {
		if !Terminal(r) {
			continue
		}
		if r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			lastOK = i
			if !r.GetRemove() && r.GetToVersion() != stable {
				lastOther = i
			}
		}
		if r.GetRemove() && !r.GetLeft() {
			lastRemoval = i
		}
		if r.GetState() == v1.RolloutState_ROLLOUT_STATE_FAILED {
			failed[r.GetToVersion()] = true
		}
		newestTo[r.GetToVersion()] = i
	}
	// The service's first rollout (the earliest created: GetStats' deploy
	// frequency counts a service younger than its window over its age,
	// from that rollout's creation; deleting it made an old service look
	// young and its deployments more frequent).
	first, firstAt := -1, time.Time{}
	for i, r := range rollouts {
		if at, ok := seqTime(r); ok && (first < 0 || at.Before(firstAt)) {
			first, firstAt = i, at
		}
	}
	for _, i := range []int{lastOK, lastOther, lastRemoval, first} {
		if i >= 0 {
			keep[i] = true
		}
	}
	for v, i := range newestTo {
		if failed[v] {
			keep[i] = true
		}
	}
	for i, r := range rollouts {
		if protected(i) {
			continue
		}
		if end := r.GetFinishedAt(); !deleteBefore.IsZero() && !keep[i] && end.IsValid() && end.AsTime().Before(deleteBefore) {
			out.Delete = append(out.Delete, r)
			continue
		}
		if keepHosts > 0 && i < n-keepHosts && !r.GetHostsCompacted() {
			out.Compact = append(out.Compact, r)
		}
	}
	return out
}

// seqTime is when r was created, else started, else finished (as
// coordinator/stats orders a service's rollouts), and whether any is set.
func seqTime(r *v1.Rollout) (time.Time, bool) {
	for _, t := range []*timestamppb.Timestamp{r.GetCreatedAt(), r.GetStartedAt(), r.GetFinishedAt()} {
		if t.IsValid() {
			return t.AsTime(), true
		}
	}
	return time.Time{}, false
}
