package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// agentCmd is `fleetwave agent`: the agent binary itself, rolled out to
// the fleet like a release (coordinator/agentupgrade.go).
func (a *app) agentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Upgrade the agent on every host",
	}
	var f struct {
		version, artifact, sign      string
		sequence                     uint64
		expires                      time.Duration
		trusted                      []string
		canary, maxParallel, maxFail uint32
		noCanary                     bool
		waves                        []uint
		bake, deadline               time.Duration
	}
	upgrade := &cobra.Command{
		Use: "upgrade --version V --artifact FILE [--sign KEY [--sequence N | --trusted-keys PUB,...] [--expires DURATION]] [--canary N | --no-canary] [--waves 50,100] " +
			"[--max-parallel N] [--max-failures N] [--bake DURATION] [--progress-deadline DURATION]",
		Short: "Roll a new agent binary out to every host in waves (admin); watch it with: fleetwave rollout watch " + spec.AgentService,
		Long: "The artifact is a .tar.gz with the executable fleetwave-agent at its root, whose `fleetwave-agent version` prints V.\n" +
			"On each host the agent checks it, hands over to it (the services keep running), and goes back to itself when the new agent\n" +
			"does not connect within its --upgrade-deadline; such a host counts as failed against the wave's --max-failures.",
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			if f.artifact == "" {
				return usageErrorf("--artifact FILE is required: a .tar.gz with the executable fleetwave-agent at its root")
			}
			pol := &v1.RolloutPolicy{}
			if fl.Changed("canary") {
				pol.Canary = f.canary
			}
			pol.NoCanary = f.noCanary
			for _, w := range f.waves {
				if w > 100 {
					return usageErrorf("invalid --waves %d: a percentage is at most 100", w)
				}
				pol.Waves = append(pol.Waves, uint32(w))
			}
			if fl.Changed("max-parallel") {
				if f.maxParallel == 0 {
					return usageErrorf("invalid --max-parallel 0: at least 1")
				}
				pol.MaxParallel = f.maxParallel
			}
			pol.MaxFailures = f.maxFail
			if fl.Changed("bake") {
				pol.Bake = durationpb.New(f.bake)
			}
			if fl.Changed("progress-deadline") {
				if f.deadline <= 0 {
					return usageErrorf("invalid --progress-deadline %s: must be positive", f.deadline)
				}
				pol.ProgressDeadline = durationpb.New(f.deadline)
			}
			if err := spec.ValidateRolloutPolicy(pol); err != nil {
				return usageErrorf("%v", err)
			}
			var sign bool
			switch {
			case f.sign != "":
				if f.expires <= 0 {
					return usageErrorf("invalid --expires %s: must be positive", f.expires)
				}
				if fl.Changed("sequence") && f.sequence == 0 {
					return usageErrorf("invalid --sequence 0: sequences start at 1")
				}
				if fl.Changed("sequence") && fl.Changed("trusted-keys") {
					return usageErrorf("--trusted-keys counts releases to choose the sequence: not with --sequence")
				}
				sign = true
			case fl.Changed("sign"):
				return usageErrorf("--sign: empty key file path")
			case fl.Changed("expires") || fl.Changed("sequence") || fl.Changed("trusted-keys"):
				return usageErrorf("--expires, --sequence and --trusted-keys need --sign KEY")
			}
			rel := &v1.Release{Service: spec.AgentService, Version: f.version, CreatedBy: a.createdBy()}
			ctx := cmd.Context()
			if err := a.uploadArtifact(ctx, rel, f.artifact); err != nil {
				return err
			}
			if sign {
				key, err := signing.LoadPrivateKey(f.sign)
				if err != nil {
					return fmt.Errorf("--sign: %w", err)
				}
				if f.sequence == 0 {
					trusted, err := signingKeys(key, f.trusted)
					if err != nil {
						return err
					}
					if f.sequence, err = a.nextAgentSequence(ctx, trusted); err != nil {
						return err
					}
				}
				// The manifest names the reserved service: a service
				// release's signature never verifies as an agent's.
				now := time.Now()
				sm, err := signing.Sign(signing.Manifest(rel, spec.AgentSpec(nil), f.sequence, now, now.Add(f.expires)), key)
				if err != nil {
					return fmt.Errorf("--sign: %w", err)
				}
				rel.Signed = sm
			}
			c, err := a.operator()
			if err != nil {
				return err
			}
			cctx, cancel := a.callCtx(ctx)
			defer cancel()
			resp, err := c.UpgradeAgents(cctx, &v1.UpgradeAgentsRequest{Release: rel, Policy: pol})
			if err != nil {
				return a.rpcErr("agent upgrade to "+f.version, err)
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			printCreated(a.stdout, &v1.CreateReleaseResponse{Release: resp.GetRelease(), Rollout: resp.GetRollout(), Note: resp.GetNote()})
			return nil
		}),
	}
	fl := upgrade.Flags()
	fl.StringVar(&f.version, "version", "", "the new agent's version (what its `fleetwave-agent version` prints)")
	fl.StringVar(&f.artifact, "artifact", "", "a .tar.gz with the executable fleetwave-agent at its root, uploaded to the coordinator")
	fl.StringVar(&f.sign, "sign", "", "sign the agent release with this ed25519 private key file (agents with --trusted-keys require it)")
	fl.DurationVar(&f.expires, "expires", DefaultSignatureExpiry, "with --sign: how long agents accept the signed release")
	fl.Uint64Var(&f.sequence, "sequence", 0, "with --sign: the release's sequence among signed agent releases (default: one above the highest so far)")
	fl.StringSliceVar(&f.trusted, "trusted-keys", nil, trustedKeysHelp)
	fl.Uint32Var(&f.canary, "canary", 1, "hosts in the first (canary) wave")
	fl.BoolVar(&f.noCanary, "no-canary", false, "no canary wave")
	fl.UintSliceVar(&f.waves, "waves", nil, "cumulative percentages of the hosts, the last 100 (default 100)")
	fl.Uint32Var(&f.maxParallel, "max-parallel", 1, "hosts upgrading at once inside a wave")
	fl.Uint32Var(&f.maxFail, "max-failures", 0, "hosts a wave may lose (their new agent did not come back) before the rollout fails")
	fl.DurationVar(&f.bake, "bake", 0, "wait after each wave before the next")
	fl.DurationVar(&f.deadline, "progress-deadline", 10*time.Minute, "the rollout fails when no host finished for this long")
	_ = upgrade.MarkFlagRequired("version")
	cmd.AddCommand(upgrade)
	return cmd
}

// nextAgentSequence is nextSequence for the agent's releases (1 before the
// first agent upgrade).
func (a *app) nextAgentSequence(ctx context.Context, trusted map[string]ed25519.PublicKey) (uint64, error) {
	seq, err := a.nextSequence(ctx, spec.AgentService, trusted)
	var re *rpcError
	if errors.As(err, &re) && re.code == codes.NotFound {
		return 1, nil
	}
	return seq, err
}
