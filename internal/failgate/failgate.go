// Package failgate limits failures per address: a token bucket of
// failures for each caller's address (a burst, then one every interval).
// A caller that may fail (a login, a join with a token) takes one ahead
// of checking, so that attempts in flight at once count too, and gives it
// back when the attempt did not fail; a caller with none left is refused
// before anything is checked, right or wrong. The dashboard's logins and
// the coordinator's Join share it.
package failgate

import (
	"sync"
	"time"
)

// Others is the key that addresses beyond a Gate's bound share.
const Others = "(others)"

// Gate is a token bucket of failures per key (a caller's address). The
// zero value is not usable: use New.
type Gate struct {
	burst   float64
	every   time.Duration
	maxKeys int

	mu sync.Mutex
	by map[string]*bucket
}

type bucket struct {
	left float64
	at   time.Time
}

// New returns a gate that allows burst failures per key, then one every
// every; it tracks at most maxKeys keys at once, and new keys past that
// share one allowance (Others) until full buckets are dropped.
func New(burst int, every time.Duration, maxKeys int) *Gate {
	return &Gate{burst: float64(burst), every: every, maxKeys: maxKeys, by: map[string]*bucket{}}
}

// refill brings b to now; it reports whether b is full.
func (g *Gate) refill(b *bucket, now time.Time) bool {
	if now.After(b.at) {
		b.left = min(g.burst, b.left+float64(now.Sub(b.at))/float64(g.every))
		b.at = now
	}
	return b.left >= g.burst
}

func (g *Gate) bucket(key string, now time.Time) *bucket {
	if b, ok := g.by[key]; ok {
		g.refill(b, now)
		return b
	}
	if len(g.by) >= g.maxKeys {
		for k, b := range g.by {
			if g.refill(b, now) {
				delete(g.by, k)
			}
		}
		if len(g.by) >= g.maxKeys {
			key = Others
			if b, ok := g.by[key]; ok {
				g.refill(b, now)
				return b
			}
		}
	}
	b := &bucket{left: g.burst, at: now}
	g.by[key] = b
	return b
}

// Take spends one of key's failures ahead of an attempt; false: none
// left, refuse the attempt.
func (g *Gate) Take(key string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.bucket(key, now)
	if b.left < 1 {
		return false
	}
	b.left--
	return true
}

// Succeeded gives back what Take spent: the attempt did not fail.
func (g *Gate) Succeeded(key string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.bucket(key, now)
	b.left = min(g.burst, b.left+1)
}

// Keys is how many keys the gate tracks now.
func (g *Gate) Keys() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.by)
}
