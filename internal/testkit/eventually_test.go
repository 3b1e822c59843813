package testkit

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// recorder is a testing.TB whose Fatalf records the message and returns
// (a real one would end the goroutine).
type recorder struct {
	testing.TB
	fatal []string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = append(r.fatal, fmt.Sprintf(format, args...))
}

func TestEventuallyReturnsOnceTrue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{TB: t}
		calls := 0
		start := time.Now()
		Eventually(rec, time.Hour, "the third call", func() bool {
			calls++
			return calls == 3
		})
		if len(rec.fatal) != 0 {
			t.Fatalf("failed: %q", rec.fatal)
		}
		if calls != 3 {
			t.Fatalf("cond called %d times, want 3 (polling must stop once it holds)", calls)
		}
		// Two short polls (5 ms, then 10 ms of the bubble's clock), not a long sleep.
		if got := time.Since(start); got != 15*time.Millisecond {
			t.Fatalf("returned after %v of fake time, want 15ms", got)
		}
	})
}

func TestEventuallyTrueAtOnceDoesNotWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{TB: t}
		start := time.Now()
		Eventually(rec, time.Hour, "true", func() bool { return true })
		if len(rec.fatal) != 0 || time.Since(start) != 0 {
			t.Fatalf("fatal %q after %v, want a return at once", rec.fatal, time.Since(start))
		}
	})
}

func TestEventuallyFailsAtTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{TB: t}
		calls := 0
		start := time.Now()
		Eventually(rec, time.Minute, "the moon to turn blue", func() bool {
			calls++
			return false
		})
		elapsed := time.Since(start)
		if len(rec.fatal) != 1 || !strings.Contains(rec.fatal[0], "the moon to turn blue") || !strings.Contains(rec.fatal[0], "1m0s") {
			t.Fatalf("fatal %q, want one naming what and the deadline", rec.fatal)
		}
		if elapsed < time.Minute || elapsed > time.Minute+maxPoll {
			t.Fatalf("gave up after %v of fake time, want the 1m deadline", elapsed)
		}
		// Polls are short: about a minute at most 50 ms apart.
		if calls < int(time.Minute/maxPoll) {
			t.Fatalf("cond called %d times in a minute: polls too far apart", calls)
		}
	})
}

func TestEventuallyErrReportsTheLastError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{TB: t}
		calls := 0
		EventuallyErr(rec, time.Second, "the leader", func() error {
			calls++
			return fmt.Errorf("attempt %d: %w", calls, errors.New("no leader"))
		})
		want := fmt.Sprintf("attempt %d: no leader", calls)
		if len(rec.fatal) != 1 || !strings.Contains(rec.fatal[0], "the leader") || !strings.Contains(rec.fatal[0], "1s") ||
			!strings.HasSuffix(rec.fatal[0], want) {
			t.Fatalf("fatal %q, want one naming what, the deadline and the last error %q", rec.fatal, want)
		}

		rec = &recorder{TB: t}
		calls = 0
		EventuallyErr(rec, time.Second, "the second call", func() error {
			if calls++; calls < 2 {
				return errors.New("not yet")
			}
			return nil
		})
		if len(rec.fatal) != 0 || calls != 2 {
			t.Fatalf("fatal %q after %d calls, want success on the second", rec.fatal, calls)
		}
	})
}
