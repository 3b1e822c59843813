// Package aliased reads the clock through another name for package time.
package aliased

import clock "time"

// Age reads the clock twice.
func Age(t clock.Time) clock.Duration {
	_ = clock.Now()
	return clock.Since(t)
}
