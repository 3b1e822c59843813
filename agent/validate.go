package agent

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"

	"github.com/fleetwave/fleetwave/agent/analysis"
	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/probe"
	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// validateAssignment checks an assignment after decoding; the error names
// the field. dir is the release directory exec checks would run in.
func validateAssignment(a *v1.Assignment, hostID string, labels map[string]string, maxBytes int64, dir string) error {
	if a.GetService() == spec.AgentService {
		// Its releases are the agent's own binaries (upgrade.go), in the
		// same release directory: never a service, installed, given to a
		// run.user or removed.
		return fmt.Errorf("service: %q is reserved for the agent's own upgrades", a.GetService())
	}
	if a.GetRemove() {
		return validateRemoval(a) // remove.go
	}
	if err := spec.CheckName("service", a.GetService()); err != nil {
		return err
	}
	if err := validateGeneration(a); err != nil {
		return err
	}
	if err := validateRelease("release", a.GetRelease(), a.GetService(), maxBytes); err != nil {
		return err
	}
	s := a.GetSpec()
	if s == nil {
		return fmt.Errorf("spec: missing")
	}
	if s.GetName() != "" && s.GetName() != a.GetService() {
		return fmt.Errorf("spec.name: %q is not the assigned service %q", s.GetName(), a.GetService())
	}
	if err := checkDuration("spec.min_healthy_time", s.GetMinHealthyTime(), true); err != nil {
		return err
	}
	if err := checkDuration("spec.healthy_deadline", s.GetHealthyDeadline(), false); err != nil {
		return err
	}
	if err := checkDuration("spec.run.stop_grace", s.GetRun().GetStopGrace(), true); err != nil {
		return err
	}
	if err := checkHandover(s.GetRun(), hostID, labels); err != nil {
		return err
	}
	if _, _, err := expandRun(s.GetRun(), hostID, labels); err != nil {
		return err
	}
	if err := checkHooks(s, hostID, labels); err != nil {
		return err
	}
	if _, err := lookupRunAs(s.GetRun()); err != nil {
		return err
	}
	acfg, _, _, _, err := compileAnalysis(a, hostID, labels)
	if err != nil {
		return err
	}
	if acfg.Compare {
		metric := 0
		for _, r := range acfg.Rules {
			if r.Kind == analysis.KindErrorRatio || r.Kind == analysis.KindLatency {
				metric++
			}
		}
		if metric > spec.MaxCompareRules {
			return fmt.Errorf("spec.analysis.compare: %d error_ratio and latency rules, more than the %d a host's summary may carry", metric, spec.MaxCompareRules)
		}
	}
	if n := len(s.GetChecks()) + len(acfg.Rules); n > lifecycle.MaxReportChecks {
		return fmt.Errorf("spec.checks: %d checks and %d analysis rules, more than the %d results a report may carry",
			len(s.GetChecks()), len(acfg.Rules), lifecycle.MaxReportChecks)
	}
	for i, c := range s.GetChecks() {
		ec, err := expandCheck(c, i, hostID, labels)
		if err != nil {
			return err
		}
		if _, err := probe.New(ec, dir, nil); err != nil {
			return fmt.Errorf("spec.checks[%d].%w", i, err) // probe names the field inside the check
		}
	}
	return nil
}

func checkDuration(field string, d *durationpb.Duration, zeroOK bool) error {
	if d == nil {
		return nil
	}
	if err := d.CheckValid(); err != nil {
		return fmt.Errorf("%s: %v", field, err)
	}
	if x := d.AsDuration(); x < 0 || (x == 0 && !zeroOK) {
		return fmt.Errorf("%s: %s must be > 0", field, x)
	}
	return nil
}

// expandRun resolves ${host.*} in the command and env values. Env comes
// back as sorted KEY=VALUE pairs.
func expandRun(r *v1.RunSpec, hostID string, labels map[string]string) (cmd, env []string, err error) {
	if len(r.GetCommand()) == 0 || r.GetCommand()[0] == "" {
		return nil, nil, fmt.Errorf("spec.run.command: empty")
	}
	for i, arg := range r.GetCommand() {
		x, err := spec.Expand(arg, hostID, labels)
		if err != nil {
			return nil, nil, fmt.Errorf("spec.run.command[%d]: %v", i, err)
		}
		cmd = append(cmd, x)
	}
	keys := make([]string, 0, len(r.GetEnv()))
	for k := range r.GetEnv() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !envKeyRE.MatchString(k) {
			return nil, nil, fmt.Errorf("spec.run.env: invalid variable name %q", k)
		}
		x, err := spec.Expand(r.GetEnv()[k], hostID, labels)
		if err != nil {
			return nil, nil, fmt.Errorf("spec.run.env[%s]: %v", k, err)
		}
		if strings.ContainsRune(x, 0) {
			return nil, nil, fmt.Errorf("spec.run.env[%s]: NUL in value", k)
		}
		env = append(env, k+"="+x)
	}
	return cmd, env, nil
}

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expandCheck returns a copy of check i with ${host.*} resolved in its
// target strings.
func expandCheck(c *v1.Check, i int, hostID string, labels map[string]string) (*v1.Check, error) {
	ec := proto.Clone(c).(*v1.Check)
	exp := func(field, s string) (string, error) {
		x, err := spec.Expand(s, hostID, labels)
		if err != nil {
			return "", fmt.Errorf("spec.checks[%d].%s: %v", i, field, err)
		}
		return x, nil
	}
	var err error
	switch k := ec.GetKind().(type) {
	case *v1.Check_Http:
		if k.Http != nil {
			k.Http.Url, err = exp("http.url", k.Http.GetUrl())
		}
	case *v1.Check_Tcp:
		if k.Tcp != nil {
			k.Tcp.Address, err = exp("tcp.address", k.Tcp.GetAddress())
		}
	case *v1.Check_Exec:
		if k.Exec != nil {
			for j, arg := range k.Exec.GetCommand() {
				if k.Exec.Command[j], err = exp(fmt.Sprintf("exec.command[%d]", j), arg); err != nil {
					break
				}
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return ec, nil
}

// checkHandover checks the handover's fields of the run spec as this host
// expands them (the coordinator validated the spec; a label can still make
// a bad address): the sockets, ready and its timeout and shutdown_delay
// (run.pre_stop is checked with the hooks). Errors name the field and the
// value.
func checkHandover(run *v1.RunSpec, hostID string, labels map[string]string) error {
	if _, err := sockets.FromSpec(run, hostID, labels); err != nil {
		return fmt.Errorf("spec.%w", err)
	}
	switch r := run.GetReady(); r {
	case "", spec.ReadyStarted, spec.ReadyNotify:
	default:
		return fmt.Errorf("spec.run.ready: %q is not %s or %s", r, spec.ReadyStarted, spec.ReadyNotify)
	}
	if err := checkDuration("spec.run.ready_timeout", run.GetReadyTimeout(), false); err != nil {
		return err
	}
	if err := checkDuration("spec.run.shutdown_delay", run.GetShutdownDelay(), true); err != nil {
		return err
	}
	if d := run.GetShutdownDelay().AsDuration(); d > spec.MaxShutdownDelay {
		return fmt.Errorf("spec.run.shutdown_delay: %s is more than %s", d, spec.MaxShutdownDelay)
	}
	return nil
}

// validateGeneration checks an assignment's generation, and the one it
// replaces: none (0), or one above it (lifecycle's pendingAssign.older).
func validateGeneration(a *v1.Assignment) error {
	if a.GetGeneration() <= 0 {
		return fmt.Errorf("generation: %d must be > 0", a.GetGeneration())
	}
	if r := a.GetReplacesGeneration(); r != 0 && r <= a.GetGeneration() {
		return fmt.Errorf("replaces_generation: %d must be 0 or above generation %d", r, a.GetGeneration())
	}
	return nil
}

// validateRelease checks the release of an assignment (field "release") or
// the one it stages (field "stage") for service; the error names the field.
func validateRelease(field string, r *v1.Release, service string, maxBytes int64) error {
	if r == nil {
		return fmt.Errorf("%s: missing", field)
	}
	if r.GetService() != "" && r.GetService() != service {
		return fmt.Errorf("%s.service: %q is not the assigned service %q", field, r.GetService(), service)
	}
	if err := spec.CheckVersion(field+".version", r.GetVersion()); err != nil {
		return err
	}
	if r.GetVersion() == install.CurrentLink {
		return fmt.Errorf("%s.version: %q is reserved", field, r.GetVersion())
	}
	art := r.GetArtifact()
	if art == nil {
		return fmt.Errorf("%s.artifact: missing", field)
	}
	if err := spec.CheckSHA256(field+".artifact.sha256", art.GetSha256()); err != nil {
		return err
	}
	if art.GetSize() <= 0 {
		return fmt.Errorf("%s.artifact.size: %d must be > 0", field, art.GetSize())
	}
	if art.GetSize() > maxBytes {
		return fmt.Errorf("%s.artifact.size: %d is over the cap of %d bytes", field, art.GetSize(), maxBytes)
	}
	if u := art.GetUrl(); u != "" {
		p, err := url.Parse(u)
		if err != nil {
			return fmt.Errorf("%s.artifact.url: %v", field, err)
		}
		if (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("%s.artifact.url: %q is not an http(s) URL", field, u)
		}
	}
	return nil
}
