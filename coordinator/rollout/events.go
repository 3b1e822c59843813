package rollout

// Event kinds: the one vocabulary of a rollout's history (v1.Event.kind),
// used by the engine, the leader, the alerter, the CLI and the tests. The
// strings are stored in etcd and shown to operators: never change one.
const (
	// Written by the leader when it starts a rollout (rollback_created for
	// a rollback), in the transaction that stores it.
	EventRolloutCreated  = "rollout_created"
	EventRollbackCreated = "rollback_created"
	// `fleetwave service delete`: the removal rollout was created (removal
	// created), and every host removed the service (service deleted).
	EventRemovalCreated = "removal_created"
	EventServiceDeleted = "service_deleted"
	// Hosts moving: a host left the service's selector (its labels changed,
	// or a selector change left it out: then recorded when the removal of
	// those hosts is created, BeginLeave), or joined it.
	EventHostLeft   = "host_left"
	EventHostJoined = "host_joined"

	// Step's events.
	EventWaveStarted         = "wave_started"
	EventHostAssigned        = "host_assigned"
	EventHostDone            = "host_done"
	EventHostFailed          = "host_failed"
	EventHostUnknown         = "host_unknown"
	EventHostBack            = "host_back"
	EventWaveBaking          = "wave_baking"
	EventWaveDone            = "wave_done"
	EventWaveWaitingApproval = "wave_waiting_approval"
	EventRolloutSucceeded    = "rollout_succeeded"
	// A closed deploy window or a blackout holds the next wave (StepHeld),
	// and the hold ended.
	EventWaveHeld      = "wave_held"
	EventWaveReleased  = "wave_released"
	EventRolloutFailed = "rollout_failed"

	// Decisions: a newer release or a rollback ends a rollout
	// (ActionSupersede), and operators' calls.
	EventRolloutSuperseded = "rollout_superseded"
	EventRolloutApproved   = "rollout_approved"
	EventRolloutPaused     = "rollout_paused"
	EventRolloutResumed    = "rollout_resumed"
	EventRolloutAborted    = "rollout_aborted"
	EventServiceUnfrozen   = "service_unfrozen"
	// An admin let a held release roll out (fleetwave rollout override).
	EventHoldOverridden = "hold_overridden"

	// A spec that changes nothing hosts run became the stable spec without
	// a rollout (ActionRecordSpec).
	EventSpecRecorded = "spec_recorded"

	// After a failed rollout, every host it moved runs a good release again
	// (Restored).
	EventFleetRestored = "fleet_restored"

	// Written by the leader when the canary-versus-baseline comparison
	// (analysis.compare, coordinator/judge) failed the rollout
	// (CompareFailed); its message is the judge's reason.
	EventComparisonFailed = "comparison_failed"
	// Written by the leader after each look of the comparison: the look,
	// its verdict and the newest window's results in plain words.
	EventComparisonJudged = "comparison_judged"

	// The alerter's webhook outcome after a failed rollout.
	EventAlertSent   = "alert_sent"
	EventAlertFailed = "alert_failed"
)

// NoWave is Event.Wave for events about the whole rollout.
const NoWave = -1

// Event is one thing that happened in a Step, for logs and `rollout watch`.
// Wave is the wave index, or NoWave for rollout-wide events; Host is "" for
// events that are not about one host.
type Event struct {
	Kind    string
	Wave    int
	Host    string
	Message string
}
