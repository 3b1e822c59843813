// Package timers uses every timer of package time, and the clock as a value.
package timers

import "time"

// All waits in every way.
func All(deadline time.Time) {
	<-time.After(time.Second)
	<-time.Tick(time.Second)
	time.NewTimer(time.Second).Stop()
	time.NewTicker(time.Second).Stop()
	time.AfterFunc(time.Second, func() {}).Stop()
	_ = time.Until(deadline)
	now := time.Now
	_ = now
}
