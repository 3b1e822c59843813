package judge

import (
	"fmt"
	"slices"
	"time"
)

// Tracker gathers the hosts' window summaries during one rollout and
// judges each window once it has closed: the k-th look compares every
// host's increases summed over the windows so far (cumulative, so the
// evidence adds up; the correction covers Config.Windows looks). A host
// is a canary or a baseline host per summary (by the release it ran), and
// its sums are kept per group, so a host that moved from the baseline to
// the canary counts in each group for what it measured there. It is pure
// (time is an argument) and not safe for concurrent use.
type Tracker struct {
	cfg   Config
	span  time.Duration
	from  time.Time
	grace time.Duration

	pending map[time.Time]map[string]HostSummary // window end -> host key -> summary
	sums    map[string]HostSummary               // host key -> increases so far
	keys    []string                             // host keys in the order first seen
	// looks is the number of looks taken; raw their results before the
	// correction (judgeWindow), all a new look needs of them: the memory
	// and time of a look do not grow with the looks before it.
	looks  int
	raw    []Result
	judged time.Time // end of the newest window judged
	last   Judgement
}

// NewTracker returns a tracker for windows of span (aligned to the clock,
// as the agents summarize them) of a rollout that started at from:
// windows that end at or before from are ignored. A window is judged
// span/2 after its end, time for every host's summary to arrive; later
// summaries of it are dropped. c is validated (an error names the field).
//
// now is when the tracker is made. Windows of the rollout that closed
// before now (a leader that took over mid-rollout: its predecessor may have
// judged them) count as looks already taken, with nothing learnt from
// them (p = 1), and their summaries are ignored: a failover never judges a
// window twice nor takes more than c.Windows looks in all.
func NewTracker(c Config, span time.Duration, from, now time.Time) (*Tracker, error) {
	c.Rules = slices.Clone(c.Rules)
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("compare: %w", err)
	}
	if span <= 0 {
		return nil, fmt.Errorf("compare: window %s: must be positive", span)
	}
	t := &Tracker{cfg: c, span: span, from: from, grace: span / 2,
		pending: map[time.Time]map[string]HostSummary{}, sums: map[string]HostSummary{}}
	// The first window ending after from, then every window closed by now.
	for end := from.Truncate(span).Add(span); !end.Add(t.grace).After(now) && !t.done(); end = end.Add(span) {
		t.looks++
		t.judged = end
	}
	return t, nil
}

// Add records a host's summary of the window ending at end; now is the
// leader's clock. canary says which group the host was in (the release it
// ran). A summary of a window already judged, before the rollout, or seen
// already is ignored (false, nil). A summary that cannot be one is refused
// with an error naming the host and what is wrong, and that host's window
// is then ignored: an end that is not a multiple of the window length
// since the Unix epoch (summaries are clock-aligned), an end more than
// span/2 after now (the host's clock is ahead), counts that make no sense
// (see Judge). So a faulty or hostile agent neither spends the
// comparison's looks nor stops the other hosts' windows from being judged.
func (t *Tracker) Add(host string, canary bool, end time.Time, counts []Counts, now time.Time) (bool, error) {
	if !end.After(t.from) || !end.After(t.judged) || t.done() {
		return false, nil
	}
	if !end.Truncate(t.span).Equal(end) {
		return false, fmt.Errorf("%s: window end %s: not a multiple of the %s window (summaries are aligned to the clock)", host, end.Format(time.RFC3339Nano), t.span)
	}
	if ahead := end.Sub(now); ahead > t.grace {
		return false, fmt.Errorf("%s: window end %s: %s ahead of the leader's clock, more than the %s allowed", host, end.Format(time.RFC3339Nano), ahead, t.grace)
	}
	key := host + " (baseline)"
	if canary {
		key = host + " (canary)"
	}
	w := t.pending[end]
	if w == nil {
		if len(t.pending) >= MaxWindows {
			return false, nil
		}
		w = map[string]HostSummary{}
		t.pending[end] = w
	}
	if _, dup := w[key]; dup {
		return false, nil
	}
	if len(w) >= MaxHostsPerWindow {
		return false, nil
	}
	if err := checkHost(counts); err != nil {
		w[key] = HostSummary{Host: host, Canary: canary} // nothing, and refused once
		return false, fmt.Errorf("%s %w", host, err)
	}
	w[key] = HostSummary{Host: host, Canary: canary, Counts: counts}
	return true, nil
}

func (t *Tracker) done() bool { return t.looks >= t.cfg.Windows }

// Judge judges, in order, every pending window closed at now (its end +
// span/2), one look each, until Config.Windows looks were taken. It
// returns the judgement of the newest look (the previous one when no
// window closed) and whether there was a new look. Summaries that cannot be
// compared (bad counts) are an error naming the host; the tracker is then
// unchanged.
func (t *Tracker) Judge(now time.Time) (Judgement, bool, error) {
	ends := make([]time.Time, 0, len(t.pending))
	for end := range t.pending {
		if !end.Add(t.grace).After(now) {
			ends = append(ends, end)
		}
	}
	slices.SortFunc(ends, func(a, b time.Time) int { return a.Compare(b) })
	looked := false
	for _, end := range ends {
		if t.done() {
			break
		}
		sums := make(map[string]HostSummary, len(t.sums))
		keys := slices.Clone(t.keys)
		for k, v := range t.sums {
			sums[k] = v
		}
		hostKeys := make([]string, 0, len(t.pending[end]))
		for k := range t.pending[end] {
			hostKeys = append(hostKeys, k)
		}
		slices.Sort(hostKeys)
		for _, k := range hostKeys {
			s := t.pending[end][k]
			prev, seen := sums[k]
			if !seen {
				keys = append(keys, k)
			}
			sums[k] = addSummary(prev, s)
		}
		scaled := capHosts(sums, keys, t.cfg.Rules)
		halveOver(sums, keys, t.cfg.Rules)
		w := Window{Start: t.from, End: end, scaled: scaled}
		for _, k := range keys {
			h := sums[k]
			h.Host = k
			w.Hosts = append(w.Hosts, h)
		}
		rs, err := judgeWindow(t.cfg, t.looks, w)
		if err != nil {
			return t.last, looked, err
		}
		t.sums, t.keys = sums, keys
		t.raw = append(t.raw, rs...)
		t.looks++
		t.last, looked = decide(t.cfg, t.raw), true
		t.judged = end
		delete(t.pending, end)
	}
	for end := range t.pending {
		if !end.After(t.judged) || t.done() {
			delete(t.pending, end)
		}
	}
	return t.last, looked, nil
}

// NextWake is when the next pending window closes (zero when none).
func (t *Tracker) NextWake() time.Time {
	var next time.Time
	for end := range t.pending {
		if at := end.Add(t.grace); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// Looks is the number of windows judged so far.
func (t *Tracker) Looks() int { return t.looks }

// addSummary adds b's counts to a's, rule by rule (a histogram's buckets
// at the bounds both have: a layout change makes the sum coarser, never
// wrong).
func addSummary(a, b HostSummary) HostSummary {
	out := HostSummary{Host: b.Host, Canary: b.Canary}
	byRule := map[string]int{}
	for _, c := range a.Counts {
		byRule[c.Rule] = len(out.Counts)
		out.Counts = append(out.Counts, Counts{Rule: c.Rule, Requests: c.Requests, Errors: c.Errors, Buckets: slices.Clone(c.Buckets)})
	}
	for _, c := range b.Counts {
		i, ok := byRule[c.Rule]
		if !ok {
			byRule[c.Rule] = len(out.Counts)
			out.Counts = append(out.Counts, Counts{Rule: c.Rule, Requests: c.Requests, Errors: c.Errors, Buckets: slices.Clone(c.Buckets)})
			continue
		}
		o := &out.Counts[i]
		o.Requests = satAdd(o.Requests, c.Requests)
		o.Errors = satAdd(o.Errors, c.Errors)
		o.Buckets = addBuckets(o.Buckets, c.Buckets)
	}
	return out
}

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

// addBuckets sums two cumulative histograms at the bounds both have (all
// of one when the other is empty). Malformed input is summed as is: Judge
// reports it.
func addBuckets(a, b []Bucket) []Bucket {
	if len(a) == 0 {
		return slices.Clone(b)
	}
	if len(b) == 0 {
		return a
	}
	bounds := commonBounds([][]Bucket{a, b})
	pa, pb := pool(bounds, [][]Bucket{a}), pool(bounds, [][]Bucket{b})
	out := make([]Bucket, len(bounds))
	for i := range bounds {
		out[i] = Bucket{UpperBound: bounds[i], Count: satAdd(pa[i], pb[i])}
	}
	return out
}

// halveOver keeps each rule's group totals within MaxGroupCount, where the
// tests are exact and fast: when a group's cumulative requests
// (observations) of a rule pass it, every host's counts of that rule, in
// both groups, are halved (rounding down) until they do not. The ratios and
// the distributions are kept, only the evidence is capped: at that size it
// is overwhelming already.
func halveOver(sums map[string]HostSummary, keys []string, rules []Rule) {
	for _, rule := range rules {
		for {
			var total [2]uint64
			for _, k := range keys {
				g := 0
				if sums[k].Canary {
					g = 1
				}
				for _, c := range sums[k].Counts {
					if c.Rule == rule.Name {
						total[g] = satAdd(total[g], c.Requests)
						if n := len(c.Buckets); n > 0 {
							total[g] = satAdd(total[g], c.Buckets[n-1].Count)
						}
					}
				}
			}
			if max(total[0], total[1]) <= MaxGroupCount {
				break
			}
			for _, k := range keys {
				h := sums[k]
				h.Counts = slices.Clone(h.Counts)
				for i := range h.Counts {
					if c := &h.Counts[i]; c.Rule == rule.Name {
						c.Requests, c.Errors = c.Requests/2, c.Errors/2
						c.Buckets = slices.Clone(c.Buckets)
						for b := range c.Buckets {
							c.Buckets[b].Count /= 2
						}
					}
				}
				sums[k] = h
			}
		}
	}
}
