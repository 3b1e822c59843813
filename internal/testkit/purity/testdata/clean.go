// Package clean is pure: time values and durations, no clock.
package clean

import (
	"fmt"
	"time"
)

// Deadline is start plus d.
func Deadline(start time.Time, d time.Duration) string {
	return fmt.Sprint(start.Add(d).Sub(start) >= time.Second)
}
