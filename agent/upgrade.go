package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/agent/install"
	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The agent upgrades itself (`fleetwave agent upgrade`; the decisions are
// lifecycle.Agent*, the handover's process side is handoff.go):
//
//  1. The coordinator assigns an agent release (ConnectResponse.agent).
//  2. The run loop fetches its artifact (the fetch, size cap and sha256 of
//     any release), verifies its signature with --trusted-keys (the manifest
//     must name the reserved service spec.AgentService and the version),
//     unpacks it into DATA_DIR/releases/fleetwave-agent/<version>/, and
//     runs `<that>/fleetwave-agent version`, which must print the version.
//  3. Once no service is in the middle of an install, a revert or a
//     removal, the agent records the upgrade as trying and stops exactly as
//     on SIGTERM (services left running, state saved, stream and listeners
//     closed); Run returns an *Upgrade.
//  4. Handoff starts the new binary with the same arguments and waits for
//     it to confirm that a coordinator accepted it (DATA_DIR/agent/
//     upgrade.json records each step).

// agentBinary is the executable's name at the root of an agent artifact.
const agentBinary = "fleetwave-agent"

// upgradeRecordPath is where the agent keeps its upgrade record.
func upgradeRecordPath(dataDir string) string {
	return filepath.Join(dataDir, "agent", "upgrade.json")
}

// loadUpgradeRecord reads the record (nil: the agent never upgraded).
func loadUpgradeRecord(dataDir string) (*lifecycle.AgentUpgrade, error) {
	p := upgradeRecordPath(dataDir)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("agent upgrade record: %w", err)
	}
	var rec lifecycle.AgentUpgrade
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("agent upgrade record %s: %w", p, err)
	}
	switch rec.State {
	case lifecycle.AgentTrying, lifecycle.AgentDone, lifecycle.AgentFailed:
	default:
		return nil, fmt.Errorf("agent upgrade record %s: state %q is not trying, done or failed", p, rec.State)
	}
	return &rec, nil
}

// saveUpgradeRecord writes the record durably (temp, fsync, rename).
func saveUpgradeRecord(dataDir string, rec *lifecycle.AgentUpgrade) error {
	p := upgradeRecordPath(dataDir)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("agent upgrade record: %w", err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("agent upgrade record: %w", err)
	}
	if err := writeFileAtomic(p, b, 0o644); err != nil {
		return fmt.Errorf("agent upgrade record: %w", err)
	}
	return nil
}

// atomicTemp is the temp file writeFileAtomic writes path through: an
// os.CreateTemp pattern beside it; path may be a glob (crashTemps).
func atomicTemp(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
}

// writeFileAtomic writes path through a temp file beside it (atomicTemp):
// fsync, rename, fsync of the directory.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(atomicTemp(path)))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Upgrade is what Run returns, as its error, when it stopped to hand over
// to a new agent binary: pass it to Handoff.
type Upgrade struct {
	// Binary is the new agent's executable (in the data dir).
	Binary string
	// Record is the upgrade, trying (saved).
	Record lifecycle.AgentUpgrade
}

func (u *Upgrade) Error() string {
	return fmt.Sprintf("the agent stopped to hand over to agent %s (%s)", u.Record.Version, u.Binary)
}

// agentUpgrade is the run loop's state of the agent's own upgrade.
type agentUpgrade struct {
	rec    *lifecycle.AgentUpgrade // the record as saved
	asg    *v1.Assignment          // the agent assignment being prepared or ready
	cancel context.CancelFunc      // ends its preparation
	binary string                  // prepared: hand over once the services settle
	stop   bool                    // handing over: the loop ends
}

// removeCommitTemps removes the temp files writeFileAtomic leaves beside
// the installed executable when the agent is killed in commitBinary.
func removeCommitTemps(cfg Config, log zerolog.Logger) {
	exe, err := installedExecutable(cfg)
	if err != nil {
		return
	}
	ents, err := os.ReadDir(filepath.Dir(exe))
	if err != nil {
		return
	}
	pattern := filepath.Base(atomicTemp(exe))
	for _, e := range ents {
		if ok, _ := filepath.Match(pattern, e.Name()); !ok || e.IsDir() {
			continue
		}
		p := filepath.Join(filepath.Dir(exe), e.Name())
		if err := os.Remove(p); err != nil {
			log.Warn().Err(err).Str("path", p).Msg("removing an interrupted agent upgrade's temp file")
			continue
		}
		log.Info().Str("path", p).Msg("removed an interrupted agent upgrade's temp file")
	}
}

// handedOverEv: the old agent of the handover this agent is the new agent
// of recorded the upgrade done and exited (Config.HandedOver).
type handedOverEv struct{}

// agentPreparedEv: the preparation of asg ended.
type agentPreparedEv struct {
	asg    *v1.Assignment
	binary string
	err    error
}

// applyAgent persists and reports a decision about the agent's version.
func (a *agent) applyAgent(d lifecycle.AgentDecision, hello bool) {
	if d.Record != nil {
		if err := saveUpgradeRecord(a.cfg.DataDir, d.Record); err != nil {
			a.log.Error().Err(err).Msg("saving the agent upgrade record")
		} else {
			a.up.rec = d.Record
		}
	}
	if d.Report != nil {
		d.Report.Service = spec.AgentService
		if hello {
			a.rep.setLatest(d.Report)
		} else {
			a.rep.put(d.Report)
		}
	}
}

// startAgent decides at start from the saved record. It first removes what
// an old agent killed in its commit (commitBinary) left beside the
// installed executable: the new binary's temp copy, as big as the agent.
// No agent writes there now: an old agent commits only after its new agent
// confirmed, which this agent, holding the data dir, has not done yet.
func (a *agent) startAgent() error {
	removeCommitTemps(a.cfg, a.log)
	rec, err := loadUpgradeRecord(a.cfg.DataDir)
	if err != nil {
		return err
	}
	a.up.rec = rec
	d := lifecycle.AgentStart(rec, a.cfg.AgentVersion, a.cfg.Confirm != nil)
	if d.Record != nil {
		a.log.Info().Str("agent_version", a.cfg.AgentVersion).Str("upgrade", string(d.Record.State)).Str("reason", d.Record.Reason).Msg("agent upgrade")
	}
	a.applyAgent(d, true)
	return nil
}

// handedOver decides again from the record once the old agent of this
// agent's handover recorded the upgrade done and exited: the upgrade is
// reported done now (lifecycle.AgentAssign).
func (a *agent) handedOver() {
	rec, err := loadUpgradeRecord(a.cfg.DataDir)
	if err != nil {
		a.log.Error().Err(err).Msg("agent upgrade: reading the record after the handover")
		return
	}
	a.up.rec = rec
	a.applyAgent(lifecycle.AgentStart(rec, a.cfg.AgentVersion, false), false)
}

// agentAssigned handles the agent assignment of a set (nil: none).
func (a *agent) agentAssigned(asg *v1.Assignment) {
	if asg == nil {
		a.dropAgentUpgrade("the agent assignment is gone")
		return
	}
	if err := validateAgentAssignment(asg, a.cfg.MaxArtifactBytes); err != nil {
		a.log.Warn().Err(err).Int64("generation", asg.GetGeneration()).Msg("invalid agent assignment ignored")
		return
	}
	if cur := a.up.asg; cur != nil && cur.GetGeneration() == asg.GetGeneration() && cur.GetRelease().GetVersion() == asg.GetRelease().GetVersion() {
		return // being prepared, or ready
	}
	d := lifecycle.AgentAssign(a.up.rec, a.cfg.AgentVersion, asg)
	if !d.Upgrade {
		a.dropAgentUpgrade("the agent is assigned " + asg.GetRelease().GetVersion())
	}
	a.applyAgent(d, false)
	if !d.Upgrade {
		return
	}
	if a.up.cancel != nil {
		a.up.cancel() // an older upgrade's preparation
	}
	a.up.asg, a.up.binary = asg, ""
	if err := a.verifyAgent(asg); err != nil {
		a.agentPrepared(agentPreparedEv{asg: asg, err: err})
		return
	}
	ctx, cancel := context.WithCancel(a.ctx)
	a.up.cancel = cancel
	a.log.Info().Str("version", asg.GetRelease().GetVersion()).Int64("generation", asg.GetGeneration()).Msg("agent upgrade: preparing the new agent")
	a.background(func() {
		defer cancel()
		bin, err := a.prepareAgent(ctx, asg)
		a.send(agentPreparedEv{asg: asg, binary: bin, err: err})
	})
}

// dropAgentUpgrade gives up an upgrade being prepared, or prepared and
// waiting for the services to settle, that is no longer assigned (why):
// the assignment is gone (an aborted first agent rollout) or says another
// version (a failed rollout's hosts go back to the stable agent). Once the
// loop is ending for the handover (stop) it is too late.
func (a *agent) dropAgentUpgrade(why string) {
	if a.up.asg == nil || a.up.stop {
		return
	}
	a.log.Info().Str("version", a.up.asg.GetRelease().GetVersion()).Int64("generation", a.up.asg.GetGeneration()).Str("reason", why).Msg("agent upgrade: no longer assigned; not handing over")
	if a.up.cancel != nil {
		a.up.cancel()
	}
	a.up.asg, a.up.cancel, a.up.binary = nil, nil, ""
}

// verifyAgent makes the trust checks of an agent release (verify.go) when
// the agent has trusted keys: a signature naming the reserved service is
// required, and the release floor applies as to any service.
func (a *agent) verifyAgent(asg *v1.Assignment) error {
	if len(a.trusted) == 0 {
		return nil
	}
	if a.floors == nil {
		a.floors = newFloorStore(a.cfg.DataDir)
	}
	fl, err := a.floors.get(spec.AgentService)
	if err != nil {
		return err
	}
	next, raise, err := verifyAssignment(asg, a.trusted, nil, fl, time.Now())
	if err != nil {
		return err
	}
	// The floor is 0 until the first fleet upgrade (an agent installed by
	// hand): an older agent than the one running is a downgrade all the
	// same, allowed only by a signed rollback statement (verified above).
	if older(asg.GetRelease().GetVersion(), a.cfg.AgentVersion) && asg.GetRollback() == nil {
		return fmt.Errorf("agent %s is older than the running agent %s and comes with no signed rollback statement: %w: refused",
			asg.GetRelease().GetVersion(), a.cfg.AgentVersion, signing.ErrBelowFloor)
	}
	if raise {
		return a.floors.raise(spec.AgentService, next)
	}
	return nil
}

// older reports whether version v is a numbered version below own (false
// when either is not vMAJOR.MINOR.PATCH, like "dev").
func older(v, own string) bool {
	rv, ok1 := spec.ParseReleaseVersion(v)
	ro, ok2 := spec.ParseReleaseVersion(own)
	return ok1 && ok2 && rv.Compare(ro) < 0
}

// agentPrepared handles the end of a preparation.
func (a *agent) agentPrepared(ev agentPreparedEv) {
	if ev.asg != a.up.asg {
		return // superseded
	}
	a.up.cancel = nil
	if ev.err != nil {
		a.log.Warn().Err(ev.err).Str("version", ev.asg.GetRelease().GetVersion()).Msg("agent upgrade failed; this agent keeps running")
		a.applyAgent(lifecycle.AgentPrepared(a.cfg.AgentVersion, ev.asg, ev.err), false)
		a.up.asg = nil
		return
	}
	a.up.binary = ev.binary
	a.maybeHandOver()
}

// maybeHandOver ends the loop for the handover once the new binary is
// ready and no service is in the middle of something (an install, a
// revert, a removal, a hook): the new agent would resume it, but a settled
// fleet hands over with nothing to resume.
func (a *agent) maybeHandOver() {
	if a.up.binary == "" || a.up.stop {
		return
	}
	for _, s := range a.services {
		if s.m.Busy() || len(s.queue) > 0 || s.blocked {
			return
		}
	}
	d := lifecycle.AgentPrepared(a.cfg.AgentVersion, a.up.asg, nil)
	if err := saveUpgradeRecord(a.cfg.DataDir, d.Record); err != nil {
		a.log.Error().Err(err).Msg("saving the agent upgrade record; the upgrade waits")
		return
	}
	a.up.rec = d.Record
	a.up.stop = true
	a.log.Info().Str("version", d.Record.Version).Str("binary", a.up.binary).Msg("agent upgrade: handing over to the new agent (services keep running)")
}

// prepareAgent fetches, verifies and unpacks the agent release and checks
// that its binary runs and is the assigned version.
func (a *agent) prepareAgent(ctx context.Context, asg *v1.Assignment) (string, error) {
	if os.Getenv("INVOCATION_ID") != "" && a.cfg.NotifySocket == "" {
		// Under systemd without a notify socket systemd could not be told
		// the new agent's pid: it would take the old one's exit for the
		// agent's and start it again beside the new one.
		return "", errors.New("the agent runs under systemd without NotifyAccess=main (no NOTIFY_SOCKET): systemd would not follow the new agent; install deployments/systemd/fleetwave-agent.service and systemctl daemon-reload")
	}
	v, want := asg.GetRelease().GetVersion(), artifactOf(asg)
	if !a.inst.Staged(spec.AgentService, v, want.SHA256) {
		release, err := a.inst.ReserveFetchSpace(ctx, want) // until it is unpacked
		if err != nil {
			return "", err
		}
		defer release()
		f, err := a.fetch(ctx, asg)
		if err != nil {
			return "", fmt.Errorf("fetch: %w", err)
		}
		ver, err := a.inst.Verify(f, want)
		if err != nil {
			return "", err
		}
		if _, err := a.inst.Stage(ctx, spec.AgentService, v, ver); err != nil {
			return "", err
		}
	}
	// Agent binaries kept: the newest --keep-releases, this one and the
	// one running (an upgraded agent runs from its release directory).
	if err := a.inst.PruneKeeping(spec.AgentService, a.cfg.KeepReleases, v, a.cfg.AgentVersion); err != nil {
		a.log.Warn().Err(err).Msg("pruning old agent binaries")
	}
	bin := filepath.Join(a.inst.ReleaseDir(spec.AgentService, v), agentBinary)
	return bin, checkAgentBinary(ctx, bin, v)
}

// agentVersionTimeout bounds `fleetwave-agent version` of a new binary.
const agentVersionTimeout = 30 * time.Second

// agentVersionWaitDelay is how long the check waits, once the binary has
// exited or been killed, for its output to close: a process it left behind
// holding stdout would otherwise keep the agent reading for ever.
var agentVersionWaitDelay = 2 * time.Second

// agentVersionMaxOutput caps what `fleetwave-agent version` may print.
const agentVersionMaxOutput = 4096

// errVersionOutput: `version` printed more than agentVersionMaxOutput.
var errVersionOutput = fmt.Errorf("printed more than %d bytes", agentVersionMaxOutput)

// cappedBuffer keeps at most its cap; a write beyond it fails, which ends
// the copy and closes the pipe (the binary gets EPIPE).
type cappedBuffer struct {
	b    []byte
	over bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if len(c.b)+len(p) > agentVersionMaxOutput {
		c.over = true
		return 0, errVersionOutput
	}
	c.b = append(c.b, p...)
	return len(p), nil
}

// checkAgentBinary runs `bin version` and wants it to print version. The
// binary runs in a process group of its own, killed whole on the timeout
// and when the check ends, and its output is capped.
func checkAgentBinary(ctx context.Context, bin, version string) error {
	fi, err := os.Lstat(bin)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("the artifact has no %s at its root", agentBinary)
	case err != nil:
		return err
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o100 == 0:
		return fmt.Errorf("%s in the artifact is not an executable file (mode %s)", agentBinary, fi.Mode())
	}
	ctx, cancel := context.WithTimeout(ctx, agentVersionTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "version")
	cmd.Env = []string{} // nothing of the agent's: it only prints its version
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = agentVersionWaitDelay
	var stdout cappedBuffer
	cmd.Stdout = &stdout
	err = cmd.Start()
	if err == nil {
		err = cmd.Wait()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // whatever it left behind
	}
	switch {
	case stdout.over: // the binary may have died of the closed pipe
		return fmt.Errorf("%s version: %w", agentBinary, errVersionOutput)
	case errors.Is(err, exec.ErrWaitDelay):
		return fmt.Errorf("%s version: exited leaving a process holding its output", agentBinary)
	case err != nil:
		return fmt.Errorf("%s version: %w", agentBinary, err)
	}
	out := stdout.b
	got := strings.TrimSpace(string(out))
	if len(got) > 64 {
		got = got[:64] + "..."
	}
	if got != version {
		return fmt.Errorf("%s version printed %q, not %q", agentBinary, got, version)
	}
	return nil
}

// validateAgentAssignment checks an agent assignment's fields.
func validateAgentAssignment(asg *v1.Assignment, maxBytes int64) error {
	if asg.GetService() != spec.AgentService {
		return fmt.Errorf("agent.service: %q, want %q", asg.GetService(), spec.AgentService)
	}
	if err := validateGeneration(asg); err != nil {
		return fmt.Errorf("agent.%w", err)
	}
	r := asg.GetRelease()
	if r == nil {
		return errors.New("agent.release: missing")
	}
	if err := spec.CheckVersion("agent.release.version", r.GetVersion()); err != nil {
		return err
	}
	if r.GetVersion() == install.CurrentLink {
		return fmt.Errorf("agent.release.version: %q is reserved", r.GetVersion())
	}
	art := r.GetArtifact()
	if err := spec.CheckSHA256("agent.release.artifact.sha256", art.GetSha256()); err != nil {
		return err
	}
	if art.GetSize() <= 0 || art.GetSize() > maxBytes {
		return fmt.Errorf("agent.release.artifact.size: %d is not within 1 and %d bytes", art.GetSize(), maxBytes)
	}
	if u := art.GetUrl(); u != "" {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("agent.release.artifact.url: %q is not an http(s) URL", u)
		}
	}
	return nil
}
