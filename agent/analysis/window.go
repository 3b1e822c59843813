package analysis

import (
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/fleetwave/fleetwave/internal/spec"
)

// processStartFamily tells a process restart apart from a counter reset
// (see increases).
const processStartFamily = "process_start_time_seconds"

// Window keeps the samples of the last Config.Window, plus the newest one
// older than that so increases cover the whole window, in a bounded ring
// (Window/Interval + 3 samples). It keeps only the metric families the
// rules read. It is not safe for concurrent use.
type Window struct {
	span     time.Duration
	interval time.Duration
	keep     map[string]bool
	buf      []Sample // ring
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
	return &Window{span: span, interval: interval, keep: keep, buf: make([]Sample, capacity)}
}

// Add appends s, keeping only the families the rules read (s itself is not
// modified), and drops samples that fell out of the window. A sample not
// newer than the newest one held is dropped and Add returns false.
func (w *Window) Add(s Sample) bool {
	if w.n > 0 && !s.At.After(w.at(w.n-1).At) {
		return false
	}
	kept := Sample{At: s.At, Families: make(map[string]*dto.MetricFamily, len(w.keep))}
	for name := range w.keep {
		if f := s.Families[name]; f != nil {
			kept.Families[name] = f
		}
	}
	if w.n == len(w.buf) {
		w.dropOldest()
	}
	w.buf[(w.head+w.n)%len(w.buf)] = kept
	w.n++
	start := s.At.Add(-w.span)
	for w.n >= 2 && !w.at(1).At.After(start) {
		w.dropOldest()
	}
	return true
}

// Retarget returns a new window for c (its window, interval and rules)
// holding w's samples, for when the spec changes while the same release
// runs (a new assignment arrives while its baseline is being collected).
// Only the families c's rules read are kept, and a family w did not keep is
// missing from the carried samples. w is not changed.
func (w *Window) Retarget(c Config) *Window {
	nw := NewWindow(c)
	for i := 0; i < w.n; i++ {
		nw.Add(w.at(i))
	}
	return nw
}

// Len is the number of samples held.
func (w *Window) Len() int { return w.n }

// Reset drops every sample.
func (w *Window) Reset() {
	clear(w.buf)
	w.head, w.n = 0, 0
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
