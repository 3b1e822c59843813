package analysis

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// processStartFamily tells a process restart apart from a counter reset
// (see increases).
const processStartFamily = "process_start_time_seconds"

// MaxSamplePoints bounds the values one sample keeps of the families the
// rules read (a counter's or gauge's series is one value; a histogram's or
// summary's series one per bucket or quantile, and one more): a scrape
// with more is refused (ErrTooManyPoints), as Prometheus's sample_limit
// fails a scrape. MaxWindowPoints bounds the values a window keeps over
// all its samples: past it the oldest samples go (the increases then
// cover a shorter span). A parsed counter series costs ~400–550 bytes
// (more with long labels, which MaxScrapeBytes bounds): a window held 79
// MiB at the bound measured, 104 MiB with 150-byte label values, however
// large the services' expositions (before, 31 samples of a 4 MiB
// exposition held 1.2 GiB). At the default window and interval (33
// samples) each sample may keep 6,060 values before the span shortens.
const (
	MaxSamplePoints = 20000
	MaxWindowPoints = 200000
)

// ErrTooManyPoints is returned (wrapped) by Window.Add for a sample over
// MaxSamplePoints; ErrNotNewer for a sample not newer than the newest held.
var (
	ErrTooManyPoints = errors.New("too many values in the families the rules read")
	ErrNotNewer      = errors.New("sample not newer than the newest held")
)

// Window keeps the samples of the last Config.Window, plus the newest one
// older than that so increases cover the whole window, in a bounded ring
// (Window/Interval + 3 samples, MaxWindowPoints values). It keeps only the
// metric families the rules read. It is not safe for concurrent use.
type Window struct {
	span     time.Duration
	interval time.Duration
	keep     map[string]bool
	buf      []Sample // ring
	points   []int    // the values of each sample in buf
	total    int      // the values of the samples held
	head     int      // index of the oldest sample
	n        int
}

// NewWindow returns an empty window for c's window, interval and rules.
func NewWindow(c Config) *Window {
	span := durationOr(c.Window, spec.DefaultAnalysisWindow)
	interval := durationOr(c.Interval, spec.DefaultAnalysisInterval)
	capacity := int(min(span/interval, spec.MaxAnalysisSamples)) + 3
	keep := map[string]bool{processStartFamily: true}
	for _, r := range c.Rules {
		switch r.Kind {
		case KindErrorRatio:
			keep[r.Metric] = true
		case KindLatency:
			keep[r.Metric] = true
			keep[r.Metric+"_bucket"] = true // untyped buckets (no # TYPE line)
		}
	}
	return &Window{span: span, interval: interval, keep: keep, buf: make([]Sample, capacity), points: make([]int, capacity)}
}

// Add appends s, keeping only the families the rules read (s itself is not
// modified), and drops samples that fell out of the window or, oldest
// first, that would put it over MaxWindowPoints. A sample not newer than
// the newest one held (ErrNotNewer) or with more than MaxSamplePoints
// values in those families (ErrTooManyPoints, naming them) is not added.
func (w *Window) Add(s Sample) error {
	if w.n > 0 && !s.At.After(w.at(w.n-1).At) {
		return ErrNotNewer
	}
	kept := Sample{At: s.At, Families: make(map[string]*dto.MetricFamily, len(w.keep))}
	points := 0
	for name := range w.keep {
		if f := s.Families[name]; f != nil {
			kept.Families[name] = f
			points += familyPoints(f)
		}
	}
	if points > MaxSamplePoints {
		names := make([]string, 0, len(kept.Families))
		for name := range kept.Families {
			names = append(names, name)
		}
		slices.Sort(names)
		return fmt.Errorf("%w: %d in %s, at most %d", ErrTooManyPoints, points, strings.Join(names, ", "), MaxSamplePoints)
	}
	for w.n > 0 && (w.n == len(w.buf) || w.total+points > MaxWindowPoints) {
		w.dropOldest()
	}
	i := (w.head + w.n) % len(w.buf)
	w.buf[i], w.points[i] = kept, points
	w.total += points
	w.n++
	start := s.At.Add(-w.span)
	for w.n >= 2 && !w.at(1).At.After(start) {
		w.dropOldest()
	}
	return nil
}

// familyPoints is how many values f holds: one per series, and one per
// bucket or quantile of a histogram's or summary's.
func familyPoints(f *dto.MetricFamily) int {
	n := 0
	for _, m := range f.GetMetric() {
		n += 1 + len(m.GetHistogram().GetBucket()) + len(m.GetSummary().GetQuantile())
	}
	return n
}

// Retarget returns a new window for c (its window, interval and rules)
// holding w's samples, for when the spec changes while the same release
// runs (a new assignment arrives while its baseline is being collected).
// Only the families c's rules read are kept, and a family w did not keep is
// missing from the carried samples (a sample over MaxSamplePoints for c's
// families is left out). w is not changed.
func (w *Window) Retarget(c Config) *Window {
	nw := NewWindow(c)
	for i := 0; i < w.n; i++ {
		_ = nw.Add(w.at(i))
	}
	return nw
}

// Len is the number of samples held.
func (w *Window) Len() int { return w.n }

// Reset drops every sample.
func (w *Window) Reset() {
	clear(w.buf)
	clear(w.points)
	w.head, w.n, w.total = 0, 0, 0
}

// Freeze measures the baseline of rules over the samples held (the old
// release's, taken up to the switch at now) and then empties the window, so
// that the new release's increases never include the old release's samples.
// Call it once, at the switch.
func (w *Window) Freeze(rules []Rule, now time.Time) Baseline {
	b := NewBaseline(rules, w, now)
	w.Reset()
	return b
}

func (w *Window) at(i int) Sample { return w.buf[(w.head+i)%len(w.buf)] }

func (w *Window) dropOldest() {
	w.buf[w.head] = Sample{}
	w.total -= w.points[w.head]
	w.points[w.head] = 0
	w.head = (w.head + 1) % len(w.buf)
	w.n--
}

// selection is what a rule measures at now: the samples taken at or before
// now and after now-span, preceded by the newest one at or before now-span
// (the reference the increases start from).
type selection struct {
	samples []Sample
	stale   time.Duration // age of the newest sample at now, if too old
	span    time.Duration // from the reference to the newest sample
}

// staleAfter is how old the newest sample may be before the data counts as
// missing (the metrics endpoint is probably unreachable).
func (w *Window) staleAfter() time.Duration { return 3 * w.interval }

func (w *Window) selectAt(now time.Time) selection {
	var sel selection
	start := now.Add(-w.span)
	for i := 0; i < w.n; i++ {
		s := w.at(i)
		if s.At.After(now) {
			break
		}
		if !s.At.After(start) {
			sel.samples = sel.samples[:0] // keep only the newest such sample
		}
		sel.samples = append(sel.samples, s)
	}
	if n := len(sel.samples); n > 0 {
		newest := sel.samples[n-1].At
		if age := now.Sub(newest); age > w.staleAfter() {
			sel.stale = age
		}
		sel.span = newest.Sub(sel.samples[0].At)
	}
	return sel
}
