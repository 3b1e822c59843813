// Package zones resolves time zones (file I/O) and calls a forbidden
// parser through an alias.
package zones

import (
	"time"

	sp "example.com/spec"
)

// Berlin loads a zone and parses windows.
func Berlin() *time.Location {
	loc, _ := time.LoadLocation("Europe/Berlin")
	_, _ = sp.ParseWindows(nil)
	return loc
}
