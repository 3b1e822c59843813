package spec

import (
	"errors"
	"fmt"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// AgentService is the reserved service name under which the coordinator
// keeps the agent binary's releases and rollouts (`fleetwave agent
// upgrade`) and agents report their upgrades. `service apply` and `release
// create` refuse it; its releases are agent binaries, its hosts every host.
const AgentService = "fleetwave-agent"

// AgentSpec is the spec of the reserved service AgentService: every host
// (no selector), nothing to run, the rollout policy of the newest upgrade.
func AgentSpec(policy *v1.RolloutPolicy) *v1.ServiceSpec {
	return &v1.ServiceSpec{Name: AgentService, Rollout: policy}
}

// ValidateRolloutPolicy checks a rollout policy alone (field names as in a
// spec: rollout.canary, rollout.waves[1], ...).
func ValidateRolloutPolicy(r *v1.RolloutPolicy) error {
	var p problems
	validateRollout(&p, r)
	return errors.Join(p...)
}

func checkNotReserved(field, name string) error {
	if name == AgentService {
		return fmt.Errorf("%s: %q is reserved for agent upgrades (fleetwave agent upgrade)", field, name)
	}
	return nil
}
