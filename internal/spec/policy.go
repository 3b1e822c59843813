package spec

// Values of a rollout policy's string fields: the one vocabulary used by
// validation, the rollout engine, the coordinator and the CLI. An empty
// field means the default (ModeAuto, OnNewReleaseSupersede).
const (
	// RolloutPolicy.mode: a rollout starts at once (auto) or waits for
	// `fleetwave rollout approve` (manual).
	ModeAuto   = "auto"
	ModeManual = "manual"

	// RolloutPolicy.on_new_release: a release created while a rollout
	// progresses ends it and rolls out from the canary (supersede), or waits
	// for it to end (queue).
	OnNewReleaseSupersede = "supersede"
	OnNewReleaseQueue     = "queue"
)
