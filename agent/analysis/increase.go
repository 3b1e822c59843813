package analysis

import (
	"math"
	"slices"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// increases sums, per key, how much a counter grew over the samples (oldest
// first; samples[0] is the reference). extract returns one sample's values by
// key; a key is one series (or one bucket of one series). The semantics are
// those of Prometheus' increase() without extrapolation (counts stay whole
// numbers), with these choices:
//
//   - a value lower than the series' previous one is a counter reset: the
//     new value is all increase;
//   - a series absent from the reference but present later appeared within
//     the window (client libraries create a series on its first increment):
//     it counts from 0, so the first errors of a new status code count;
//   - a series missing from some scrapes contributes only between the
//     scrapes it is in;
//   - when process_start_time_seconds moves forward between two scrapes, the
//     process restarted: every series counts from 0 after it, even if its
//     value did not go down.
//
// Non-finite and negative values are ignored. seen is false when no sample
// had any key at all.
func increases[K comparable](samples []Sample, extract func(Sample) map[K]float64) (inc map[K]float64, seen bool) {
	restarts := restartCounts(samples)
	type last struct {
		v   float64
		idx int
	}
	prev := map[K]last{}
	inc = map[K]float64{}
	for i, s := range samples {
		for k, v := range extract(s) {
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				continue
			}
			seen = true
			p, ok := prev[k]
			switch {
			case !ok && i == 0:
				inc[k] += 0
			case !ok:
				inc[k] += v
			case restarts[i] > restarts[p.idx], v < p.v:
				inc[k] += v
			default:
				inc[k] += v - p.v
			}
			prev[k] = last{v, i}
		}
	}
	return inc, seen
}

// restartCounts returns, per sample, how many process restarts the samples
// up to it show (process_start_time_seconds moving forward by more than
// half a second).
func restartCounts(samples []Sample) []int {
	out := make([]int, len(samples))
	var prevStart float64
	havePrev := false
	for i, s := range samples {
		if i > 0 {
			out[i] = out[i-1]
		}
		start, ok := familyScalar(s.Families[processStartFamily])
		if !ok {
			continue
		}
		if havePrev && start > prevStart+0.5 {
			out[i]++
		}
		prevStart, havePrev = start, true
	}
	return out
}

// familyScalar is the value of a family's only series.
func familyScalar(f *dto.MetricFamily) (float64, bool) {
	if f == nil || len(f.GetMetric()) != 1 {
		return 0, false
	}
	v, ok := scalarValue(f.GetMetric()[0])
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

// scalarValue is the value of a counter, gauge or untyped series.
func scalarValue(m *dto.Metric) (float64, bool) {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue(), true
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue(), true
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

// seriesKey identifies a series by its labels, sorted, without the label
// named skip.
func seriesKey(labels []*dto.LabelPair, skip string) string {
	pairs := make([]string, 0, len(labels))
	for _, l := range labels {
		if l.GetName() == skip {
			continue
		}
		pairs = append(pairs, strconv.Quote(l.GetName())+"="+strconv.Quote(l.GetValue()))
	}
	slices.Sort(pairs)
	return strings.Join(pairs, ",")
}

func labelValue(labels []*dto.LabelPair, name string) string {
	for _, l := range labels {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// errKey is one series of an error_ratio counter.
type errKey struct {
	isErr  bool
	series string
}

// counterExtractor returns the series of counter family metric, marked as
// errors when their label matches re.
func counterExtractor(metric, label string, re interface{ MatchString(string) bool }) func(Sample) map[errKey]float64 {
	return func(s Sample) map[errKey]float64 {
		f := s.Families[metric]
		out := make(map[errKey]float64, len(f.GetMetric()))
		for _, m := range f.GetMetric() {
			v, ok := scalarValue(m)
			if !ok {
				continue
			}
			out[errKey{re.MatchString(labelValue(m.GetLabel(), label)), seriesKey(m.GetLabel(), "")}] = v
		}
		return out
	}
}

// bucketKey is one bucket of one histogram series.
type bucketKey struct {
	le     float64
	series string
}

// bucketExtractor returns the cumulative bucket counts of histogram metric:
// from a histogram family (the +Inf bucket from the sample count when the
// exposition left it out), or else from the metric_bucket family of a
// histogram exposed without a # TYPE line.
func bucketExtractor(metric string) func(Sample) map[bucketKey]float64 {
	return func(s Sample) map[bucketKey]float64 {
		out := map[bucketKey]float64{}
		if f := s.Families[metric]; f != nil && (f.GetType() == dto.MetricType_HISTOGRAM || f.GetType() == dto.MetricType_GAUGE_HISTOGRAM) {
			for _, m := range f.GetMetric() {
				h := m.GetHistogram()
				if h == nil {
					continue
				}
				series := seriesKey(m.GetLabel(), "le")
				hasInf := false
				for _, b := range h.GetBucket() {
					ub := b.GetUpperBound()
					if math.IsNaN(ub) {
						continue
					}
					c := float64(b.GetCumulativeCount())
					if b.CumulativeCountFloat != nil {
						c = b.GetCumulativeCountFloat()
					}
					out[bucketKey{ub, series}] = c
					hasInf = hasInf || math.IsInf(ub, 1)
				}
				if !hasInf && len(h.GetBucket()) > 0 {
					c := float64(h.GetSampleCount())
					if h.SampleCountFloat != nil {
						c = h.GetSampleCountFloat()
					}
					out[bucketKey{math.Inf(1), series}] = c
				}
			}
			return out
		}
		for _, m := range s.Families[metric+"_bucket"].GetMetric() {
			v, ok := scalarValue(m)
			if !ok {
				continue
			}
			ub, err := strconv.ParseFloat(labelValue(m.GetLabel(), "le"), 64)
			if err != nil || math.IsNaN(ub) {
				continue
			}
			out[bucketKey{ub, seriesKey(m.GetLabel(), "le")}] = v
		}
		return out
	}
}

// bucket is one cumulative bucket of a histogram summed over its series.
type bucket struct {
	upper float64
	count float64
}

// sumBuckets adds bucket increases over series by upper bound, sorted by
// upper bound, with counts made monotonic (as histogram_quantile does: a
// series missing a bucket must not make a later bucket smaller).
func sumBuckets(inc map[bucketKey]float64) []bucket {
	byLE := map[float64]float64{}
	for k, v := range inc {
		byLE[k.le] += v
	}
	out := make([]bucket, 0, len(byLE))
	for le, c := range byLE {
		out = append(out, bucket{le, c})
	}
	slices.SortFunc(out, func(a, b bucket) int {
		switch {
		case a.upper < b.upper:
			return -1
		case a.upper > b.upper:
			return 1
		}
		return 0
	})
	for i := 1; i < len(out); i++ {
		out[i].count = max(out[i].count, out[i-1].count)
	}
	return out
}

// bucketQuantile estimates quantile q (0 < q < 1) from cumulative buckets
// sorted by upper bound whose last is +Inf, like Prometheus'
// histogram_quantile: linear interpolation within the bucket holding the
// rank, the lower bound of the first bucket being 0 (unless its upper bound
// is not positive), and the largest finite upper bound when the rank falls
// in the +Inf bucket. ok is false when there is no finite bucket or no
// observation, where histogram_quantile would return NaN.
func bucketQuantile(q float64, buckets []bucket) (float64, bool) {
	v, ok := rawBucketQuantile(q, buckets)
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

func rawBucketQuantile(q float64, buckets []bucket) (float64, bool) {
	n := len(buckets)
	if n < 2 || !math.IsInf(buckets[n-1].upper, 1) {
		return 0, false
	}
	total := buckets[n-1].count
	if !(total > 0) || math.IsInf(total, 0) {
		return 0, false
	}
	rank := q * total
	b := 0
	for b < n-1 && buckets[b].count < rank {
		b++
	}
	if b == n-1 {
		return buckets[n-2].upper, true
	}
	if b == 0 && buckets[0].upper <= 0 {
		return buckets[0].upper, true
	}
	start, end, count := 0.0, buckets[b].upper, buckets[b].count
	if b > 0 {
		start = buckets[b-1].upper
		count -= buckets[b-1].count
		rank -= buckets[b-1].count
	}
	if !(count > 0) {
		return end, true
	}
	return start + (end-start)*(rank/count), true
}
