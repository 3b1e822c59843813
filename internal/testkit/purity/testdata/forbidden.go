// Package forbidden does I/O.
package forbidden

import "os"

// Host names the machine.
func Host() (string, error) { return os.Hostname() }
