// Package testkit is test infrastructure: helpers shared by the tests of
// several packages. Only _test.go files import it; product code and the
// non-test helpers (testfleet, testcluster) must not.
package testkit

import (
	"errors"
	"testing"
	"time"
)

// Polling starts at firstPoll and doubles up to maxPoll, so a condition
// that holds at once is seen at once and a long wait does not spin.
const (
	firstPoll = 5 * time.Millisecond
	maxPoll   = 50 * time.Millisecond
)

// errNotYet is what Eventually's condition "returns" while it is false.
var errNotYet = errors.New("condition false")

// Eventually polls cond, at once and then at short intervals, until it
// returns true, and fails the test with t.Fatalf naming what and the
// deadline if it has not by the time within has passed. within is a
// failure deadline, not the expected time: make it generous, so that a
// loaded machine does not fail a correct program.
//
// cond runs on the test's goroutine (it may call t.Fatal); it is called
// once more after the deadline before the test fails.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := poll(within, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}); err != nil {
		t.Fatalf("%s: not true within %v", what, within)
	}
}

// EventuallyErr is Eventually for a condition that explains itself: it
// polls cond until it returns nil, and the failure names the last error.
func EventuallyErr(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	if err := poll(within, cond); err != nil {
		t.Fatalf("%s: not true within %v; last error: %v", what, within, err)
	}
}

// poll calls cond until it returns nil (poll returns nil) or within has
// passed (poll returns cond's last error).
func poll(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	wait := firstPoll
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if !time.Now().Before(deadline) {
			return err
		}
		timer.Reset(min(wait, time.Until(deadline)+time.Millisecond))
		<-timer.C
		wait = min(2*wait, maxPoll)
	}
}
