package stats

import "time"

// The DORA bands, best first; "" means not enough data.
const (
	BandElite  = "elite"
	BandHigh   = "high"
	BandMedium = "medium"
	BandLow    = "low"
)

// LeadTimeBand places a median lead time for changes.
func LeadTimeBand(median time.Duration) string {
	switch {
	case median < time.Hour:
		return BandElite
	case median < 7*day:
		return BandHigh
	case median < 30*day:
		return BandMedium
	default:
		return BandLow
	}
}

// DeployFrequencyBand places a deployment frequency in deployments per day.
func DeployFrequencyBand(perDay float64) string {
	switch {
	case perDay >= 1:
		return BandElite
	case perDay >= 1.0/7:
		return BandHigh
	case perDay >= 1.0/30:
		return BandMedium
	default:
		return BandLow
	}
}

// ChangeFailureBand places a change failure rate (0..1).
func ChangeFailureBand(rate float64) string {
	switch {
	case rate <= 0.15:
		return BandElite
	case rate <= 0.30:
		return BandHigh
	case rate <= 0.45:
		return BandMedium
	default:
		return BandLow
	}
}

// RestoreBand places a median time to restore.
func RestoreBand(median time.Duration) string {
	switch {
	case median < time.Hour:
		return BandElite
	case median < day:
		return BandHigh
	case median < 7*day:
		return BandMedium
	default:
		return BandLow
	}
}

var bandRank = map[string]int{BandElite: 1, BandHigh: 2, BandMedium: 3, BandLow: 4}

// Worst is the worst of the bands given, ignoring "" (and unknown names);
// "" when none is set.
func Worst(bands ...string) string {
	worst := ""
	for _, b := range bands {
		if bandRank[b] > bandRank[worst] {
			worst = b
		}
	}
	return worst
}
