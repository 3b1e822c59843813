// Package goroutine starts one.
package goroutine

// Start starts f in a goroutine.
func Start(f func()) { go f() }
