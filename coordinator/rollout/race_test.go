//go:build race

package rollout

// raceEnabled: the test binary runs under the race detector.
const raceEnabled = true
