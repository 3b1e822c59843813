package cli

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetwave/fleetwave/internal/signing"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// rolloutAction builds `rollout pause|resume|abort SERVICE`: one call that
// returns the rollout, printed as one line.
func (a *app) rolloutAction(use, short, done string, do func(ctx context.Context, c v1.OperatorServiceClient, service string) (*v1.Rollout, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use + " SERVICE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			ro, err := call(a, cmd, use+" rollout of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.Rollout, error) {
				return do(ctx, c, args[0])
			})
			if err != nil {
				return err
			}
			return a.printRolloutLine(ro, done)
		}),
	}
}

// printRolloutLine prints a rollout as one line (or JSON).
func (a *app) printRolloutLine(ro *v1.Rollout, done string) error {
	if a.jsonOutput() {
		return printJSON(a.stdout, ro)
	}
	line := fmt.Sprintf("rollout %s %s: %s → %s (%s)", ro.GetId(), done,
		versionOrNone(ro.GetFromVersion()), ro.GetToVersion(), rolloutState(ro.GetState()))
	if ro.GetReason() != "" {
		line += ": " + ro.GetReason()
	}
	fmt.Fprintln(a.stdout, line)
	return nil
}

func (a *app) pauseCmd() *cobra.Command {
	return a.rolloutAction("pause", "Stop moving more hosts (hosts already moving finish; their failures still count)", "paused",
		func(ctx context.Context, c v1.OperatorServiceClient, s string) (*v1.Rollout, error) {
			r, err := c.PauseRollout(ctx, &v1.PauseRolloutRequest{Service: s})
			return r.GetRollout(), err
		})
}

func (a *app) resumeCmd() *cobra.Command {
	return a.rolloutAction("resume", "Continue a paused rollout", "resumed",
		func(ctx context.Context, c v1.OperatorServiceClient, s string) (*v1.Rollout, error) {
			r, err := c.ResumeRollout(ctx, &v1.ResumeRolloutRequest{Service: s})
			return r.GetRollout(), err
		})
}

func (a *app) abortCmd() *cobra.Command {
	var reason string
	cmd := a.rolloutAction("abort", "Fail the rollout: hosts that moved go back to last good and the service is frozen", "aborted",
		func(ctx context.Context, c v1.OperatorServiceClient, s string) (*v1.Rollout, error) {
			r, err := c.AbortRollout(ctx, &v1.AbortRolloutRequest{Service: s, Reason: reason})
			return r.GetRollout(), err
		})
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the rollout history)")
	return cmd
}

// rollbackCmd is the top-level `fleetwave rollback SERVICE [--to VERSION]
// [--sign KEY [--spec FILE] [--expires D]]`.
func (a *app) rollbackCmd() *cobra.Command {
	var to, sign, specFile string
	var trustedFiles []string
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "rollback SERVICE [--to VERSION [--sign KEY [--spec FILE] [--trusted-keys PUB,...] [--expires DURATION]]]",
		Short: "Roll back fast (no canary, no bake) to an earlier release; works while frozen",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			var key ed25519.PrivateKey
			var specDigest string
			switch {
			case sign == "" && fl.Changed("sign"):
				return usageErrorf("--sign: empty key file path")
			case sign == "" && (fl.Changed("spec") || fl.Changed("expires") || fl.Changed("trusted-keys")):
				return usageErrorf("--spec, --expires and --trusted-keys need --sign KEY")
			case sign != "" && to == "":
				return usageErrorf("--sign needs --to VERSION: the statement names the release")
			case sign != "" && expires <= 0:
				return usageErrorf("invalid --expires %s: must be positive", expires)
			}
			var trusted map[string]ed25519.PublicKey
			if sign != "" {
				k, err := signing.LoadPrivateKey(sign)
				if err != nil {
					return fmt.Errorf("--sign: %w", err)
				}
				key = k
				if trusted, err = signingKeys(k, trustedFiles); err != nil {
					return err
				}
				if specFile != "" {
					sp, err := a.loadSpec(cmd, specFile)
					if err != nil {
						return err
					}
					if sp.GetName() != args[0] {
						return usageErrorf("--spec: %s is the spec of service %q, not %q", specFile, sp.GetName(), args[0])
					}
					specDigest = signing.SpecDigest(sp)
				}
			}
			ro, err := call(a, cmd, "rollback of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.Rollout, error) {
				req := &v1.RollbackRequest{Service: args[0], ToVersion: to}
				if key != nil {
					rels, err := c.ListReleases(ctx, &v1.ListReleasesRequest{Service: args[0]})
					if err != nil {
						return nil, err
					}
					_, maxSeq := signing.Highest(rels.GetReleases(), trusted, time.Now())
					a.warnUnverified(rels.GetReleases(), maxSeq, "the rollback")
					sr, err := signRollback(rels.GetReleases(), to, specDigest, key, maxSeq, expires)
					if err != nil {
						return nil, err
					}
					req.Signed = sr
				}
				r, err := c.Rollback(ctx, req)
				return r.GetRollout(), err
			})
			if err != nil {
				return err
			}
			return a.printRolloutLine(ro, "started")
		}),
	}
	cmd.Long = "Rollback starts a rollout to an earlier release: one wave, no canary, no bake, no approval,\n" +
		"at most max(max_parallel, a quarter of the hosts) at once. Without --to it goes to the release\n" +
		"the service ran before (the stable one if a rollout is in progress). It refuses a release whose\n" +
		"last rollout failed. Follow it with `fleetwave rollout watch SERVICE`.\n\n" +
		"Agents with --trusted-keys refuse a release older (by signed sequence) than one they accepted,\n" +
		"unless the rollback carries a statement signed with --sign: it names exactly the signed release\n" +
		"--to (its manifest), may undo releases up to the highest sequence signed so far, and expires\n" +
		"(--expires, default 24h). Give --spec when the release must run with a spec other than the one\n" +
		"it was signed with."
	fl := cmd.Flags()
	fl.StringVar(&to, "to", "", "the release version to go back to")
	fl.StringVar(&sign, "sign", "", "sign a rollback statement for --to with this ed25519 private key file")
	fl.StringVar(&specFile, "spec", "", "with --sign: the spec file the release runs with, if not the one it was signed with")
	fl.DurationVar(&expires, "expires", signing.DefaultRollbackExpiry, "with --sign: how long agents accept the statement")
	fl.StringSliceVar(&trustedFiles, "trusted-keys", nil, "with --sign: public key files (comma-separated) whose signed releases count, besides --sign's own, for the statement's max_floor (the highest sequence signed so far): the agents' --trusted-keys")
	return cmd
}

// signRollback signs a rollback statement for version among the service's
// releases: valid on floors up to maxSeq, the highest sequence signed so
// far by a trusted key (signing.Highest: a listed record that does not
// verify counts for nothing).
func signRollback(rels []*v1.Release, version, specDigest string, key ed25519.PrivateKey, maxSeq uint64, expires time.Duration) (*v1.SignedRollback, error) {
	var target *v1.Release
	for _, r := range rels {
		if r.GetVersion() == version {
			target = r
		}
	}
	switch {
	case target == nil:
		return nil, fmt.Errorf("--to %s: no such release", version)
	case signing.ParseManifest(target) == nil:
		return nil, fmt.Errorf("--to %s: the release is not signed (agents with trusted keys refuse it anyway)", version)
	}
	now := time.Now()
	return signing.SignRollback(signing.Rollback(target, maxSeq, specDigest, now, now.Add(expires)), key)
}

// historyCmd is `fleetwave rollout history SERVICE [--id ID] [--limit N]`.
func (a *app) historyCmd() *cobra.Command {
	var id string
	var limit int
	cmd := &cobra.Command{
		Use:   "history SERVICE",
		Short: "The recorded decisions and events of the service's rollouts (the newest 1000 unless --limit), oldest first",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if limit < 1 || limit > maxHistoryLimit {
				return usageErrorf("invalid --limit %d: want 1 to %d (fleetwave events %s streams any number)", limit, maxHistoryLimit, args[0])
			}
			resp, err := call(a, cmd, "history of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListEventsResponse, error) {
				return c.ListEvents(ctx, &v1.ListEventsRequest{Service: args[0], RolloutId: id, Limit: uint32(limit)})
			})
			if err != nil {
				return err
			}
			if resp.GetTruncated() {
				more := "fleetwave events " + args[0]
				if id != "" {
					more += " --rollout " + id
				}
				fmt.Fprintf(a.stderr, "fleetwave: the newest %d events; older ones left out (--limit up to %d, or %s for all)\n", len(resp.GetEvents()), maxHistoryLimit, more)
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			tw := newTable(a.stdout)
			row(tw, "TIME", "ROLLOUT", "EVENT", "WAVE", "HOST", "BY", "MESSAGE")
			for _, e := range resp.GetEvents() {
				wave := "-"
				if e.GetWave() >= 0 {
					wave = fmt.Sprint(e.GetWave())
				}
				row(tw, fmtTime(e.GetAt()), orDash(e.GetRolloutId()), e.GetKind(), wave, orDash(e.GetHost()), orDash(e.GetActor()), e.GetMessage())
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().StringVar(&id, "id", "", "only this rollout (six digits, e.g. 000003)")
	cmd.Flags().IntVar(&limit, "limit", 1000, fmt.Sprintf("at most this many events, the newest (at most %d)", maxHistoryLimit))
	return cmd
}

// maxHistoryLimit is the most events `rollout history` asks for: the
// coordinator's most for one ListEvents.
const maxHistoryLimit = 10000
