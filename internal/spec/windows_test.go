package spec

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func mustWindow(t *testing.T, days, start, end, tz string) Window {
	t.Helper()
	w, err := ParseWindow("w", &v1.DeployWindow{Days: days, Start: start, End: end, TimeZone: tz})
	if err != nil {
		t.Fatalf("ParseWindow(%s %s-%s %s): %v", days, start, end, tz, err)
	}
	return w
}

func TestInWindows(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	office := mustWindow(t, "mon-fri", "09:00", "17:00", "Europe/Berlin")
	night := mustWindow(t, "sat", "22:00", "02:00", "UTC")
	// 2026-03-06 is a Friday.
	at := func(d, h, m int, loc *time.Location) time.Time { return time.Date(2026, 3, d, h, m, 0, 0, loc) }
	for _, c := range []struct {
		ws   []Window
		now  time.Time
		open bool
		next time.Time
	}{
		{nil, at(6, 3, 0, time.UTC), true, time.Time{}},
		{[]Window{office}, at(6, 8, 59, berlin), false, at(6, 9, 0, berlin)},
		{[]Window{office}, at(6, 9, 0, berlin), true, at(6, 17, 0, berlin)},
		{[]Window{office}, at(6, 16, 59, berlin), true, at(6, 17, 0, berlin)},
		{[]Window{office}, at(6, 17, 0, berlin), false, at(9, 9, 0, berlin)}, // Friday evening: Monday
		{[]Window{office}, at(7, 12, 0, berlin), false, at(9, 9, 0, berlin)}, // Saturday
		{[]Window{night}, at(7, 21, 0, time.UTC), false, at(7, 22, 0, time.UTC)},
		{[]Window{night}, at(8, 1, 0, time.UTC), true, at(8, 2, 0, time.UTC)}, // Sunday 01:00: Saturday's window
		{[]Window{night}, at(8, 2, 0, time.UTC), false, at(14, 22, 0, time.UTC)},
		{[]Window{office, night}, at(7, 23, 0, time.UTC), true, at(8, 2, 0, time.UTC)},
	} {
		open, next := InWindows(c.ws, c.now)
		if open != c.open || !next.Equal(c.next) {
			t.Errorf("InWindows(%v, %s) = %v, %s; want %v, %s", c.ws, c.now, open, next, c.open, c.next)
		}
	}
	if got, want := NextOpening([]Window{office}, at(7, 12, 0, berlin)), at(9, 9, 0, berlin); !got.Equal(want) {
		t.Errorf("NextOpening = %s, want %s", got, want)
	}
}

// TestWindowAcrossDST: a window keeps its local times when the zone's
// offset changes (Europe/Berlin goes to summer time on 2026-03-29).
func TestWindowAcrossDST(t *testing.T) {
	w := mustWindow(t, "", "09:00", "10:00", "Europe/Berlin")
	before := time.Date(2026, 3, 28, 9, 30, 0, 0, time.UTC) // 10:30 CET: closed
	if open, next := InWindows([]Window{w}, before); open || !next.Equal(time.Date(2026, 3, 29, 7, 0, 0, 0, time.UTC)) {
		t.Errorf("InWindows before DST = %v, %s; want closed, opening 07:00 UTC (09:00 CEST)", open, next)
	}
}

func TestParseWindowErrors(t *testing.T) {
	for _, c := range []struct {
		w    *v1.DeployWindow
		want string
	}{
		{&v1.DeployWindow{Days: "mon-fry", Start: "09:00", End: "17:00"}, `w.days: "mon-fry" is not a weekday`},
		{&v1.DeployWindow{Start: "9:00", End: "17:00"}, `w.start: "9:00" is not a time of day`},
		{&v1.DeployWindow{Start: "09:00", End: "24:01"}, `w.end: "24:01" is not a time of day`},
		{&v1.DeployWindow{Start: "24:00", End: "10:00"}, `w.start: "24:00" is not a time of day`},
		{&v1.DeployWindow{Start: "-1:00", End: "10:00"}, `w.start: "-1:00" is not a time of day`},
		{&v1.DeployWindow{Start: "09:00", End: "10:00", TimeZone: "Mars/Olympus"}, `w.time_zone: "Mars/Olympus" is not an IANA time zone`},
		{&v1.DeployWindow{Start: "09:00", End: "10:00", TimeZone: "Local"}, `w.time_zone: "Local" depends on the coordinator's machine`},
	} {
		_, err := ParseWindow("w", c.w)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseWindow(%v) = %v, want %q", c.w, err, c.want)
		}
	}
	w := mustWindow(t, "fri-mon", "09:00", "24:00", "")
	if w.String() != "fri-mon 09:00-24:00 UTC" || !w.Days[time.Friday] || !w.Days[time.Sunday] || !w.Days[time.Monday] || w.Days[time.Tuesday] {
		t.Errorf("fri-mon parsed as %v (%s)", w.Days, w)
	}
}

func TestValidateWindowsAndAfter(t *testing.T) {
	s := valid()
	s.Rollout = &v1.RolloutPolicy{
		Windows: []*v1.DeployWindow{{Start: "09:00", End: "17:00"}, {Days: "noday", Start: "09:00", End: "17:00"}},
		After:   []string{"api", "Bad_Name", "api", s.GetName()},
	}
	err := Validate(s)
	for _, want := range []string{
		`rollout.windows[1].days: "noday"`,
		`rollout.after[1]: invalid name "Bad_Name"`,
		`rollout.after[2]: "api" is named twice`,
		fmt.Sprintf(`rollout.after[3]: %q is the service itself (a cycle)`, s.GetName()),
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v\nwant %q", err, want)
		}
	}
	s.Rollout.Windows = make([]*v1.DeployWindow, MaxWindows+1)
	for i := range s.Rollout.Windows {
		s.Rollout.Windows[i] = &v1.DeployWindow{Start: "09:00", End: "17:00"}
	}
	s.Rollout.After = nil
	if err := Validate(s); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("rollout.windows: %d windows, more than %d", MaxWindows+1, MaxWindows)) {
		t.Errorf("Validate with %d windows: %v", MaxWindows+1, err)
	}
}

// TestWindowDSTEdges: a window never opens at a wall-clock time outside
// its start and end. Europe/Berlin skips 02:00-03:00 on 2026-03-29 and
// repeats 02:00-03:00 on 2026-10-25. A start or end in the skipped hour
// is the instant the clock jumps past it (03:00 CEST); an end in the
// repeated hour is its first occurrence (the window closes the first time
// the clock reads it), a start its second (it opens when the clock last
// reads it). Before, Go's normalisation moved a skipped end an hour late
// (22:00-02:30 stayed open until 03:30) and a repeated end to the second
// occurrence (open until the clock read 02:30 the second time).
func TestWindowDSTEdges(t *testing.T) {
	utc := func(mo time.Month, d, h, m int) time.Time { return time.Date(2026, mo, d, h, m, 0, 0, time.UTC) }
	for _, c := range []struct {
		days, start, end string
		now              time.Time
		open             bool
		next             time.Time
	}{
		// Spring: 01:00Z is 02:00 CET = 03:00 CEST.
		{"sat", "22:00", "02:30", utc(3, 29, 0, 59), true, utc(3, 29, 1, 0)},  // closes as the clock jumps past 02:30
		{"sat", "22:00", "02:30", utc(3, 29, 1, 0), false, utc(4, 4, 20, 0)},  // 03:00 CEST: closed (before: open until 03:30)
		{"sun", "02:30", "03:15", utc(3, 29, 0, 59), false, utc(3, 29, 1, 0)}, // opens as the clock jumps past 02:30
		{"sun", "02:30", "03:15", utc(3, 29, 1, 5), true, utc(3, 29, 1, 15)},  // 03:05 CEST: open (before: never that day)
		{"sun", "02:00", "03:00", utc(3, 29, 0, 30), false, utc(4, 5, 0, 0)},  // the hour does not exist: no opening that day
		{"", "00:00", "24:00", utc(3, 29, 1, 30), true, utc(3, 29, 22, 0)},    // a 23-hour day is still whole
		// Autumn: 00:00Z-01:00Z is 02:00-03:00 CEST, 01:00Z-02:00Z is 02:00-03:00 CET.
		{"sun", "01:30", "02:30", utc(10, 25, 0, 29), true, utc(10, 25, 0, 30)},  // 02:29 CEST
		{"sun", "01:30", "02:30", utc(10, 25, 0, 45), false, utc(11, 1, 0, 30)},  // 02:45 CEST: past the end (before: open)
		{"sun", "01:30", "02:30", utc(10, 25, 1, 15), false, utc(11, 1, 0, 30)},  // 02:15 CET, the second time: closed
		{"sun", "02:30", "04:00", utc(10, 25, 0, 45), false, utc(10, 25, 1, 30)}, // opens at the second 02:30
	} {
		w := mustWindow(t, c.days, c.start, c.end, "Europe/Berlin")
		open, next := InWindows([]Window{w}, c.now)
		if open != c.open || !next.Equal(c.next) {
			t.Errorf("InWindows(%s, %s) = %v, %s; want %v, %s", w, c.now.Format(time.RFC3339), open, next.UTC().Format(time.RFC3339), c.open, c.next.Format(time.RFC3339))
		}
	}
}

// TestParseWindowHugeInput: a window's days, start, end and time zone are
// bounded (MaxWindowField bytes); a huge one is refused naming the field
// and its length, without echoing it, and without a look-up.
func TestParseWindowHugeInput(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	for _, c := range []struct {
		w     *v1.DeployWindow
		field string
	}{
		{&v1.DeployWindow{Days: strings.Repeat("mon,", 1<<18), Start: "09:00", End: "10:00"}, "w.days"},
		{&v1.DeployWindow{Start: huge, End: "10:00"}, "w.start"},
		{&v1.DeployWindow{Start: "09:00", End: huge}, "w.end"},
		{&v1.DeployWindow{Start: "09:00", End: "10:00", TimeZone: "Europe/" + huge}, "w.time_zone"},
	} {
		_, err := ParseWindow("w", c.w)
		want := fmt.Sprintf("bytes, more than %d", MaxWindowField)
		if got := fmt.Sprint(err); len(got) > 200 || !strings.HasPrefix(got, c.field+": ") || !strings.Contains(got, want) {
			t.Errorf("ParseWindow(huge %s) = %.200s, want a short error naming %s and %q", c.field, got, c.field, want)
		}
	}
}
