package spec

import (
	"fmt"
	"strings"
	"time"

	// Time zones resolve on hosts without a zoneinfo database (minimal
	// containers, CI images): the standard library's copy is the fallback.
	_ "time/tzdata"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Limits of the rollout order and windows.
const (
	// MaxWindows bounds rollout.windows.
	MaxWindows = 32
	// MaxAfter bounds rollout.after.
	MaxAfter = 32
	// MaxWindowField bounds each of a window's days, start, end and
	// time_zone (the longest IANA zone name is 32 bytes).
	MaxWindowField = 64
)

var weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Window is a parsed rollout.windows entry: the weekdays it opens on
// (indexed by time.Weekday), its start and end in minutes of the day, and
// its time zone. An end at or before the start closes the next day.
type Window struct {
	Days       [7]bool
	Start, End int
	Loc        *time.Location
	text       string
}

// String is the window as written: "mon-fri 09:00-17:00 Europe/Berlin".
func (w Window) String() string { return w.text }

// ParseWindow parses one rollout.windows entry; field names it in errors
// (e.g. "rollout.windows[0]").
func ParseWindow(field string, w *v1.DeployWindow) (Window, error) {
	out := Window{}
	for _, f := range []struct{ name, val string }{{"days", w.GetDays()}, {"start", w.GetStart()}, {"end", w.GetEnd()}, {"time_zone", w.GetTimeZone()}} {
		if len(f.val) > MaxWindowField {
			return out, fmt.Errorf("%s.%s: %d bytes, more than %d", field, f.name, len(f.val), MaxWindowField)
		}
	}
	days := strings.ToLower(strings.TrimSpace(w.GetDays()))
	if days == "" || days == "*" {
		for i := range out.Days {
			out.Days[i] = true
		}
	} else {
		for _, part := range strings.Split(days, ",") {
			part = strings.TrimSpace(part)
			a, b, isRange := strings.Cut(part, "-")
			from, to := dayIndex(a), dayIndex(b)
			if !isRange {
				to = from
			}
			if from < 0 || to < 0 {
				return out, fmt.Errorf("%s.days: %q is not a weekday or range of mon, tue, wed, thu, fri, sat, sun (e.g. mon-fri)", field, part)
			}
			for d := from; ; d = (d + 1) % 7 {
				out.Days[d] = true
				if d == to {
					break
				}
			}
		}
	}
	var err error
	if out.Start, err = parseClock(field+".start", w.GetStart(), false); err != nil {
		return out, err
	}
	if out.End, err = parseClock(field+".end", w.GetEnd(), true); err != nil {
		return out, err
	}
	tz := w.GetTimeZone()
	if tz == "" {
		tz = "UTC"
	}
	if tz == "Local" {
		return out, fmt.Errorf("%s.time_zone: %q depends on the coordinator's machine: name an IANA zone (e.g. Europe/Berlin) or UTC", field, tz)
	}
	if out.Loc, err = time.LoadLocation(tz); err != nil {
		return out, fmt.Errorf("%s.time_zone: %q is not an IANA time zone (e.g. Europe/Berlin, UTC): %w", field, tz, err)
	}
	d := days
	if d == "" {
		d = "*"
	}
	out.text = fmt.Sprintf("%s %s-%s %s", d, w.GetStart(), w.GetEnd(), tz)
	return out, nil
}

// ParseWindows parses a policy's windows (nil when there are none).
func ParseWindows(ws []*v1.DeployWindow) ([]Window, error) {
	var out []Window
	for i, w := range ws {
		pw, err := ParseWindow(fmt.Sprintf("rollout.windows[%d]", i), w)
		if err != nil {
			return nil, err
		}
		out = append(out, pw)
	}
	return out, nil
}

func dayIndex(s string) int {
	for i, d := range weekdays {
		if s == d {
			return i
		}
	}
	return -1
}

// parseClock parses "HH:MM" into minutes of the day; "24:00" only as an end.
func parseClock(field, s string, end bool) (int, error) {
	digit := func(i int) int {
		if s[i] < '0' || s[i] > '9' {
			return -100
		}
		return int(s[i] - '0')
	}
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("%s: %q is not a time of day HH:MM (24-hour)", field, s)
	}
	h, m := digit(0)*10+digit(1), digit(3)*10+digit(4)
	if h < 0 || m < 0 || h > 24 || m > 59 || (h == 24 && (m != 0 || !end)) {
		return 0, fmt.Errorf("%s: %q is not a time of day HH:MM (00:00 to 23:59; 24:00 as an end)", field, s)
	}
	return h*60 + m, nil
}

// Intervals are the window's openings that overlap [from-1 day, from+8
// days], as instants (a window opening on a listed day; DST moves its
// instants as the zone does: wallInstant). An opening the zone skips
// (02:00-03:00 on the day the clocks go forward) is empty.
func (w Window) intervals(from time.Time) [][2]time.Time {
	var out [][2]time.Time
	local := from.In(w.Loc)
	for off := -1; off <= 8; off++ {
		day := time.Date(local.Year(), local.Month(), local.Day()+off, 0, 0, 0, 0, time.UTC)
		if !w.Days[day.Weekday()] {
			continue
		}
		endMin := w.End
		if w.End <= w.Start {
			endMin += 24 * 60
		}
		start := wallInstant(day.Add(time.Duration(w.Start)*time.Minute), w.Loc, false)
		end := wallInstant(day.Add(time.Duration(endMin)*time.Minute), w.Loc, true)
		out = append(out, [2]time.Time{start, end})
	}
	return out
}

// wallInstant is the instant loc's clock reads wall (its date and time,
// given in UTC as a plain wall clock), so that a window is never open at a
// wall-clock time outside its start and end: a time the zone skips (the
// clocks go forward) is the instant the clock jumps past it; a time it
// repeats (the clocks go back) is its first occurrence for an end (the
// window closes the first time the clock reads it) and its second for a
// start (it opens the last time). time.Date alone moves a skipped time an
// hour late and picks the second occurrence of a repeated one, which kept
// a window open up to an hour past its end.
func wallInstant(wall time.Time, loc *time.Location, end bool) time.Time {
	t := time.Date(wall.Year(), wall.Month(), wall.Day(), wall.Hour(), wall.Minute(), 0, 0, loc)
	zoneStart, _ := t.ZoneBounds()
	if !sameWall(t.In(loc), wall) {
		return zoneStart // skipped: the transition
	}
	if end && !zoneStart.IsZero() {
		_, before := zoneStart.Add(-time.Nanosecond).Zone()
		if _, now := t.Zone(); before > now {
			if first := t.Add(-time.Duration(before-now) * time.Second); first.Before(zoneStart) && sameWall(first.In(loc), wall) {
				return first
			}
		}
	}
	return t
}

func sameWall(t, wall time.Time) bool {
	return t.Year() == wall.Year() && t.YearDay() == wall.YearDay() && t.Hour() == wall.Hour() && t.Minute() == wall.Minute()
}

// InWindows reports whether now is inside one of the windows (always, when
// there are none) and when that answer may next change: the nearest
// opening or closing after now (zero when there are no windows).
func InWindows(ws []Window, now time.Time) (open bool, next time.Time) {
	if len(ws) == 0 {
		return true, time.Time{}
	}
	for _, w := range ws {
		for _, iv := range w.intervals(now) {
			if !iv[1].After(iv[0]) {
				continue // skipped by the zone
			}
			if !now.Before(iv[0]) && now.Before(iv[1]) {
				open = true
			}
			for _, t := range iv {
				if t.After(now) && (next.IsZero() || t.Before(next)) {
					next = t
				}
			}
		}
	}
	return open, next
}

// NextOpening is when the windows next open after now (zero if none within
// a week, which only a window of zero length gives).
func NextOpening(ws []Window, now time.Time) time.Time {
	var next time.Time
	for _, w := range ws {
		for _, iv := range w.intervals(now) {
			if iv[0].After(now) && iv[1].After(iv[0]) && (next.IsZero() || iv[0].Before(next)) {
				next = iv[0]
			}
		}
	}
	return next
}
