package agent

import (
	"context"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/probe"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// prober is one check with its schedule.
type prober struct {
	p        probe.Prober
	interval time.Duration
	timeout  time.Duration
}

// beginChecks starts a goroutine that runs the release's probers on their
// intervals and sends the latest result of every prober to the loop after
// each round.
func (a *agent) beginChecks(s *service, act lifecycle.Action) {
	a.stopChecks(s)
	name, epoch := s.name, act.Epoch
	if len(act.Assignment.GetSpec().GetChecks()) == 0 {
		return // nothing to probe: the machine judges by exits and time
	}
	dir := a.inst.ReleaseDir(name, act.Version)
	var probers []prober
	// Exec checks run as the service's user (run.user), as its hooks do.
	cred, buildErr := credential(act.Assignment.GetSpec().GetRun())
	// And with its environment (internal/procenv, run.env).
	var env []string
	if buildErr == nil {
		_, env, buildErr = expandRun(act.Assignment.GetSpec().GetRun(), a.cfg.HostID, a.cfg.Labels)
	}
	for i, c := range act.Assignment.GetSpec().GetChecks() {
		if buildErr != nil {
			break
		}
		ec, err := expandCheck(c, i, a.cfg.HostID, a.cfg.Labels)
		var p probe.Prober
		if err == nil {
			p, err = a.newProber(name, act.Assignment.GetSpec().GetResources(), ec, dir, cred, env)
		}
		if err != nil {
			buildErr = err
			break
		}
		probers = append(probers, prober{p: p, interval: probe.Interval(ec), timeout: probe.Timeout(ec)})
	}
	ctx, cancel := context.WithCancel(a.ctx)
	s.checkCancel = cancel
	if buildErr != nil {
		// Validated on arrival, so this only happens after a restart with
		// other labels: report the check as failing until the deadline.
		res := []lifecycle.CheckResult{{Name: "checks", OK: false, Detail: buildErr.Error()}}
		a.background(func() { a.send(checksEv{svc: name, epoch: epoch, at: time.Now(), results: res}) })
		return
	}
	a.background(func() { a.runChecks(ctx, name, epoch, probers) })
}

// newProber builds one of service's probers. Where cgroups are usable an
// exec check runs in a cgroup of its own below the service's, with the
// service's limits, emptied when the check ends: it runs as the service's
// user, which can rewrite the release's files it names, and whatever it
// leaves running (a setsid'd daemon) would otherwise live on outside any
// cgroup, unlimited and never stopped.
func (a *agent) newProber(service string, res *v1.Resources, c *v1.Check, dir string, cred *syscall.Credential, env []string) (probe.Prober, error) {
	p, err := probe.New(c, dir, cred)
	p = probe.WithEnv(p, env)
	if err != nil || !a.cgroups.Usable() {
		return p, err
	}
	cgs, limits := a.cgroups, limitsOf(res)
	return probe.WithStarter(p, func(ctx context.Context, cmd *exec.Cmd) (func(), error) {
		return cgs.StartIn(ctx, service, limits, cmd)
	}), nil
}

func (a *agent) stopChecks(s *service) {
	if s.checkCancel != nil {
		s.checkCancel()
		s.checkCancel = nil
	}
}

func (a *agent) runChecks(ctx context.Context, name string, epoch uint64, probers []prober) {
	results := make([]lifecycle.CheckResult, len(probers))
	next := make([]time.Time, len(probers))
	// Whether each check passed in this checking period, and how often it
	// failed before: until it passes it is retried sooner than its
	// interval (lifecycle.ProbeDelay), as the process is usually still
	// starting when the first run (at once) finds it not answering.
	passed := make([]bool, len(probers))
	failures := make([]int, len(probers))
	for i, p := range probers {
		results[i] = lifecycle.CheckResult{Name: p.p.Name(), Detail: "not run yet"}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		var wg sync.WaitGroup
		ran := make([]bool, len(probers))
		for i := range probers {
			if now.Before(next[i]) {
				continue
			}
			ran[i] = true
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				results[i] = runProbe(ctx, probers[i])
			}(i)
		}
		wg.Wait()
		if ctx.Err() != nil {
			return
		}
		for i := range probers {
			if !ran[i] {
				continue
			}
			if results[i].OK {
				passed[i] = true
			} else {
				failures[i]++
			}
			next[i] = now.Add(lifecycle.ProbeDelay(probers[i].interval, passed[i], failures[i]))
		}
		snapshot := append([]lifecycle.CheckResult(nil), results...)
		if !a.send(checksEv{svc: name, epoch: epoch, at: time.Now(), results: snapshot}) {
			return
		}
		wait := time.Duration(-1)
		now = time.Now()
		for _, t := range next {
			if d := t.Sub(now); wait < 0 || d < wait {
				wait = d
			}
		}
		if wait < 0 {
			wait = 0
		}
		timer.Reset(wait)
	}
}

// runProbe runs one probe with its timeout; a panic-free prober is assumed,
// but a probe that overruns its timeout is reported as failing.
func runProbe(ctx context.Context, p prober) lifecycle.CheckResult {
	pctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	r := p.p.Probe(pctx)
	if pctx.Err() != nil && r.OK {
		r = probe.Result{Name: r.Name, OK: false, Detail: fmt.Sprintf("timed out after %s", p.timeout)}
	}
	name := r.Name
	if name == "" {
		name = p.p.Name()
	}
	return lifecycle.CheckResult{Name: name, OK: r.OK, Detail: r.Detail}
}
