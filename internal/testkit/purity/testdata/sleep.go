// Package sleep waits on the clock.
package sleep

import "time"

// Wait sleeps.
func Wait() { time.Sleep(time.Second) }
