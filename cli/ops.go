package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

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
		}),
	}
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

// rollbackCmd is the top-level `fleetwave rollback SERVICE [--to VERSION]`.
func (a *app) rollbackCmd() *cobra.Command {
	var to string
	cmd := a.rolloutAction("rollback", "Roll back fast (no canary, no bake) to an earlier release; works while frozen", "started",
		func(ctx context.Context, c v1.OperatorServiceClient, s string) (*v1.Rollout, error) {
			r, err := c.Rollback(ctx, &v1.RollbackRequest{Service: s, ToVersion: to})
			return r.GetRollout(), err
		})
	cmd.Long = "Rollback starts a rollout to an earlier release: one wave, no canary, no bake, no approval,\n" +
		"at most max(max_parallel, a quarter of the hosts) at once. Without --to it goes to the release\n" +
		"the service ran before (the stable one if a rollout is in progress). It refuses a release whose\n" +
		"last rollout failed. Follow it with `fleetwave rollout watch SERVICE`."
	cmd.Flags().StringVar(&to, "to", "", "the release version to go back to")
	return cmd
}

// historyCmd is `fleetwave rollout history SERVICE [--id ID]`.
func (a *app) historyCmd() *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "history SERVICE",
		Short: "Every recorded decision and event of the service's rollouts, oldest first",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "history of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListEventsResponse, error) {
				return c.ListEvents(ctx, &v1.ListEventsRequest{Service: args[0], RolloutId: id})
			})
			if err != nil {
				return err
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
	return cmd
}
