package cli

import (
	"strings"
	"testing"
	"time"
)

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"now":                       now,
		"+2h":                       now.Add(2 * time.Hour),
		"2026-12-24T00:00:00+01:00": time.Date(2026, 12, 23, 23, 0, 0, 0, time.UTC),
	} {
		if got, err := parseWhen("--from", in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"":          "--to: must be set",
		"+-1h":      `--to: "+-1h" is not +DURATION`,
		"+2 hours":  `--to: "+2 hours" is not +DURATION`,
		"yesterday": `--to: "yesterday" is not RFC 3339`,
	} {
		if _, err := parseWhen("--to", in, now); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("parseWhen(%q): %v, want %q", in, err, msg)
		}
	}
}
