package agent

import (
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// openCgroups opens the agent's cgroups (parent "" is the default) and
// says once what services get: their own cgroups, or process groups alone
// and why.
func openCgroups(parent string, log zerolog.Logger) *supervise.Cgroups {
	if parent == "" {
		parent = supervise.DefaultCgroupParent
	}
	c := supervise.OpenCgroups(parent)
	if c.Usable() {
		log.Info().Str("mode", c.Mode()).Str("cgroup", c.Parent()).Msg("cgroups: every service process runs in its own cgroup")
		removed, err := c.RemoveStale(supervise.StaleCgroupAge, time.Now())
		if err != nil {
			log.Warn().Err(err).Msg("looking for empty cgroups left over")
		} else if len(removed) > 0 {
			log.Info().Strs("cgroups", removed).Msg("removed empty cgroups left over")
		}
	} else {
		log.Warn().Str("mode", c.Mode()).Str("reason", c.Reason()).
			Msg("cgroups unusable: services run in process groups alone; specs with resources.memory_max or resources.tasks_max are refused, resources.cpu_weight is not applied")
	}
	return c
}

// limitsOf are the supervisor's limits of a spec's resources (checked by
// checkResources).
func limitsOf(r *v1.Resources) supervise.Limits {
	return supervise.Limits{MemoryMax: spec.MemoryMax(r), CPUWeight: r.GetCpuWeight(), TasksMax: r.GetTasksMax()}
}

// checkResources checks an assignment's resources, and refuses limits that
// this host cannot enforce: memory_max and tasks_max without usable
// cgroups (a service would run unbounded where its spec says it must not).
// A cpu_weight alone is a share, not a bound: it runs, unweighted.
func checkResources(r *v1.Resources, cgs *supervise.Cgroups) error {
	if r == nil {
		return nil
	}
	if s := r.GetMemoryMax(); s != "" {
		n, err := spec.ParseBytes(s)
		q := s // leading zeros parse: any length
		if len(q) > 64 {
			q = q[:64] + "..."
		}
		if err != nil {
			return fmt.Errorf("spec.resources.memory_max: %q: %w", q, err)
		}
		if n < spec.MinMemoryMax || n > spec.MaxMemoryMax {
			return fmt.Errorf("spec.resources.memory_max: %q is outside 1Mi..1Pi", q)
		}
	}
	if w := r.GetCpuWeight(); w != 0 && (w < spec.MinCPUWeight || w > spec.MaxCPUWeight) {
		return fmt.Errorf("spec.resources.cpu_weight: %d is outside %d..%d", w, spec.MinCPUWeight, spec.MaxCPUWeight)
	}
	if t := r.GetTasksMax(); t > spec.MaxTasksMax {
		return fmt.Errorf("spec.resources.tasks_max: %d is more than %d", t, spec.MaxTasksMax)
	}
	if cgs.Usable() {
		return nil
	}
	field := ""
	switch {
	case r.GetMemoryMax() != "":
		field = "spec.resources.memory_max"
	case r.GetTasksMax() != 0:
		field = "spec.resources.tasks_max"
	default:
		return nil
	}
	return fmt.Errorf("%s: cannot be enforced on this host (%s): refused rather than run without the limit", field, cgs.Reason())
}
