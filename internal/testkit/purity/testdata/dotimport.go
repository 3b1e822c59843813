// Package dotimport imports time into its own scope.
package dotimport

import . "time"

// Stamp reads the clock without naming the package.
func Stamp() Time { return Now() }
