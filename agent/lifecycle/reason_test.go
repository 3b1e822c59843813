package lifecycle

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestOutputTail: the end of a hook's output in a reason is bounded, starts
// at a line when cut, is valid UTF-8 and holds no control characters.
func TestOutputTail(t *testing.T) {
	if got := outputTail("a\nb\r\n\tc\x1b[31m\n\n"); got != "a | b |  c [31m" {
		t.Fatalf("short: %q", got)
	}
	long := strings.Repeat("0123456789\n", 1000) + "last \xff line\n"
	got := outputTail(long)
	if len(got) > MaxHookOutput+len(" | ")*MaxHookOutput/11 || !strings.HasPrefix(got, "0123456789 | ") ||
		!strings.HasSuffix(got, "last \uFFFD line") || !utf8.ValidString(got) {
		t.Fatalf("long: %d bytes, %q...%q", len(got), got[:20], got[len(got)-20:])
	}
}

// TestReportReasonBounded: a report's reason never exceeds MaxReason (the
// coordinator refuses longer ones): its start and end are kept.
func TestReportReasonBounded(t *testing.T) {
	m := New("web")
	m.reason = "first failure: " + strings.Repeat("é", 3000) + " latest failure"
	r := m.Report().GetReason()
	if len(r) > MaxReason || !utf8.ValidString(r) || !strings.HasPrefix(r, "first failure: ") ||
		!strings.HasSuffix(r, " latest failure") || !strings.Contains(r, " [...] ") {
		t.Fatalf("%d bytes: %q...%q", len(r), r[:20], r[len(r)-20:])
	}
}
