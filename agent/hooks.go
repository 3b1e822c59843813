package agent

import (
	"fmt"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/hookspec"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The environment of a hook, besides the service's run.env (documented in
// the README, "Lifecycle hooks").
const (
	envService  = "FLEETWAVE_SERVICE"          // the service's name
	envHook     = "FLEETWAVE_HOOK"             // after_install, before_start, after_start, validate, before_stop
	envOp       = "FLEETWAVE_OPERATION"        // install, revert, recover, restore, remove, stop (stop-services)
	envVersion  = "FLEETWAVE_VERSION"          // the release the hook belongs to (its directory is the working directory)
	envPrevious = "FLEETWAVE_PREVIOUS_VERSION" // the release it replaces (not for before_stop; "" for none)
	envNext     = "FLEETWAVE_NEXT_VERSION"     // before_stop: the release that takes over ("" for none)
	envHostID   = "FLEETWAVE_HOST_ID"          // the host's id
	envGen      = "FLEETWAVE_GENERATION"       // the assignment's generation
)

// startHook carries out ActHook: the release's hook runs from its release
// directory, as the service's user, with the service's environment and
// the FLEETWAVE_* variables, its output appended to the service log, its
// process group killed at the action's timeout. Its end (with the end of
// its output) is fed back with lifecycle.HookDone.
func (a *agent) startHook(s *service, act lifecycle.Action) {
	name := s.name
	h, err := a.hookOf(name, act)
	a.background(func() {
		ev := doneEv{svc: name, seq: act.Seq, hook: true, err: err}
		if err == nil {
			a.log.Info().Str("service", name).Str("hook", act.Hook).Str("version", act.Version).
				Str("operation", act.Operation).Strs("command", h.Command).Dur("timeout", h.Timeout).Msg("hook")
			ev.output, ev.err = supervise.RunHookTail(a.ctx, h)
		}
		if ev.err != nil {
			a.log.Warn().Str("service", name).Str("hook", act.Hook).Str("version", act.Version).Err(ev.err).Msg("hook failed")
		}
		a.send(ev)
	})
}

// hookHost is what building a hook needs besides its action: the host's
// id and labels (${host.*}, FLEETWAVE_HOST_ID), the data dir (absolute:
// the release directory, the service log) and the cgroups hooks run in.
// The agent has one of its config; stop-services (stop.go) one of its
// flags, without a running agent.
type hookHost struct {
	hostID  string
	labels  map[string]string
	dataDir string
	cgroups *supervise.Cgroups
}

// hookOf builds the hook an ActHook runs.
func (a *agent) hookOf(svc string, act lifecycle.Action) (supervise.Hook, error) {
	return hookHost{hostID: a.cfg.HostID, labels: a.cfg.Labels, dataDir: a.cfg.DataDir, cgroups: a.cgroups}.hookOf(svc, act)
}

// hookOf builds the hook an ActHook (or stop-services' drain) runs.
func (hh hookHost) hookOf(svc string, act lifecycle.Action) (supervise.Hook, error) {
	asg := act.Assignment
	hk := hookspec.Of(asg.GetSpec(), act.Hook)
	if hk == nil {
		return supervise.Hook{}, fmt.Errorf("%s: the release has no such hook", act.Hook)
	}
	field := "spec." + hookspec.Field(asg.GetSpec(), act.Hook)
	cmd, err := expandHook(field, hk, hh.hostID, hh.labels)
	if err != nil {
		return supervise.Hook{}, err
	}
	_, env, err := expandRun(asg.GetSpec().GetRun(), hh.hostID, hh.labels)
	if err != nil {
		return supervise.Hook{}, err
	}
	env = append(env,
		envService+"="+svc,
		envHook+"="+act.Hook,
		envOp+"="+act.Operation,
		envVersion+"="+act.Version,
		envHostID+"="+hh.hostID,
		fmt.Sprintf("%s=%d", envGen, asg.GetGeneration()),
	)
	if act.Hook == hookspec.BeforeStop {
		env = append(env, envNext+"="+act.Next)
	} else {
		env = append(env, envPrevious+"="+act.Previous)
	}
	cred, err := credential(asg.GetSpec().GetRun())
	if err != nil {
		return supervise.Hook{}, err
	}
	return supervise.Hook{Service: svc, Name: act.Hook, Dir: install.ReleaseDirIn(hh.dataDir, svc, act.Version),
		Command: cmd, Env: env, LogPath: serviceLogPath(hh.dataDir, svc), Timeout: act.Timeout, Credential: cred,
		Cgroups: hh.cgroups, Limits: limitsOf(asg.GetSpec().GetResources()),
		TailBytes: lifecycle.MaxHookOutput}, nil
}

// expandHook resolves ${host.*} in a hook's command; errors name field.
func expandHook(field string, h *v1.Hook, hostID string, labels map[string]string) ([]string, error) {
	if len(h.GetCommand()) == 0 || h.GetCommand()[0] == "" {
		return nil, fmt.Errorf("%s.command: empty", field)
	}
	cmd := make([]string, 0, len(h.GetCommand()))
	for i, arg := range h.GetCommand() {
		x, err := spec.Expand(arg, hostID, labels)
		if err != nil {
			return nil, fmt.Errorf("%s.command[%d]: %v", field, i, err)
		}
		cmd = append(cmd, x)
	}
	return cmd, nil
}

// checkHooks checks the hooks of a spec as this host expands them (the
// coordinator validated the spec; a label the host lacks can still break
// a placeholder) and their timeouts.
func checkHooks(s *v1.ServiceSpec, hostID string, labels map[string]string) error {
	if s.GetHooks().GetBeforeStop() != nil && s.GetRun().GetPreStop() != nil {
		return fmt.Errorf("spec.run.pre_stop: set together with hooks.before_stop (it is its alias: set one)")
	}
	for _, name := range hookspec.Names {
		h := hookspec.Of(s, name)
		if h == nil {
			continue
		}
		field := "spec." + hookspec.Field(s, name)
		if _, err := expandHook(field, h, hostID, labels); err != nil {
			return err
		}
		if err := checkDuration(field+".timeout", h.GetTimeout(), false); err != nil {
			return err
		}
		if max := hookspec.MaxTimeoutOf(name); h.GetTimeout().AsDuration() > max {
			return fmt.Errorf("%s.timeout: %s is more than %s", field, h.GetTimeout().AsDuration(), max)
		}
	}
	return nil
}
