package failgate

import (
	"fmt"
	"testing"
	"time"
)

func TestBurstThenOneEveryInterval(t *testing.T) {
	g := New(3, 10*time.Second, 100)
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	for i := range 3 {
		if !g.Take("a", t0) {
			t.Fatalf("failure %d of the burst refused", i+1)
		}
	}
	if g.Take("a", t0) {
		t.Fatal("a failure past the burst allowed")
	}
	if !g.Take("b", t0) {
		t.Fatal("another key refused: keys share an allowance")
	}
	if g.Take("a", t0.Add(9*time.Second)) {
		t.Fatal("allowed before one interval passed")
	}
	if !g.Take("a", t0.Add(10*time.Second)) {
		t.Fatal("refused one interval later")
	}
	if g.Take("a", t0.Add(10*time.Second)) {
		t.Fatal("two allowed one interval later")
	}
	// A clock going back does not take the allowance away or add to it.
	if g.Take("a", t0) {
		t.Fatal("allowed when the clock went back")
	}
	// Long idle refills to the burst, not beyond.
	later := t0.Add(time.Hour)
	for i := range 3 {
		if !g.Take("a", later) {
			t.Fatalf("after an hour: failure %d refused", i+1)
		}
	}
	if g.Take("a", later) {
		t.Fatal("after an hour: more than the burst allowed")
	}
}

func TestSucceededGivesBack(t *testing.T) {
	g := New(2, time.Minute, 100)
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	for i := range 10 {
		if !g.Take("a", now) {
			t.Fatalf("attempt %d refused although every one succeeded", i+1)
		}
		g.Succeeded("a", now)
	}
	// Attempts in flight at once count: two taken, none given back yet.
	g.Take("a", now)
	g.Take("a", now)
	if g.Take("a", now) {
		t.Fatal("a third attempt in flight allowed with a burst of 2")
	}
	g.Succeeded("a", now)
	g.Succeeded("a", now)
	g.Succeeded("a", now) // more than taken: capped at the burst
	for i := range 2 {
		if !g.Take("a", now) {
			t.Fatalf("attempt %d refused after successes", i+1)
		}
	}
	if g.Take("a", now) {
		t.Fatal("successes raised the allowance above the burst")
	}
}

// Past maxKeys, new keys share one allowance (Others) until full buckets
// are dropped: an attacker with many addresses cannot grow the map.
func TestKeysBounded(t *testing.T) {
	g := New(1, time.Minute, 4)
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	for i := range 4 {
		if !g.Take(fmt.Sprint("k", i), now) {
			t.Fatalf("k%d refused", i)
		}
	}
	if !g.Take("new1", now) {
		t.Fatal("the first key past the bound refused")
	}
	if g.Take("new2", now) {
		t.Fatal("a second key past the bound allowed: they share one allowance")
	}
	if n := g.Keys(); n > 5 {
		t.Fatalf("%d keys tracked, want at most maxKeys+1", n)
	}
	// A minute later every bucket is full: they are dropped and new keys
	// get their own again.
	later := now.Add(time.Minute)
	if !g.Take("new2", later) || !g.Take("new3", later) {
		t.Fatal("new keys refused once old buckets refilled")
	}
	if n := g.Keys(); n > 4 {
		t.Fatalf("%d keys tracked after refill, want at most 4", n)
	}
}
