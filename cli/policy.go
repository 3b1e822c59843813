package cli

// Rollout policy for operations (issue 18): rollout plan, rollout
// override, and fleetwave freeze (coordinator-wide blackouts).

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// rolloutPlanCmd is `fleetwave rollout plan SERVICE [--version V] [-f SPEC]`.
func (a *app) rolloutPlanCmd() *cobra.Command {
	var version, file string
	cmd := &cobra.Command{
		Use:   "plan SERVICE [--version V] [-f spec.yaml]",
		Short: "Preview the rollout a release (or a spec) would start now, without changing anything",
		Long: `Preview, without changing anything, the rollout a release would start now:
its waves and their hosts (planned by the same engine code as a real
rollout, from the hosts known now), what changes (the release, the spec's
fields), the hosts whose agent is not connected (their wave would wait for
them until the progress deadline), and what would hold it: a closed deploy
window, a blackout, a service it comes after, a freeze.

--version previews a release that exists (default: the newest, else the
stable release); -f previews a spec as if applied. Exit status 0 either way;
-o json prints the whole preview for CI.`,
		Example: `  fleetwave rollout plan web --version v7
  fleetwave rollout plan web -f web.yaml -o json`,
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			req := &v1.PlanRolloutRequest{Service: args[0], Version: version}
			if file != "" {
				sp, err := a.loadSpec(cmd, file)
				if err != nil {
					return err
				}
				req.Spec = sp
			}
			resp, err := call(a, cmd, "plan rollout of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.PlanRolloutResponse, error) {
				return c.PlanRollout(ctx, req)
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			return printPlan(a, resp)
		}),
	}
	cmd.Flags().StringVar(&version, "version", "", "the release to preview (default: the newest)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "a spec to preview as if applied (- for stdin)")
	return cmd
}

func printPlan(a *app, p *v1.PlanRolloutResponse) error {
	w := a.stdout
	r := p.GetRollout()
	fmt.Fprintf(w, "plan for %s: %s → %s (generation %d), nothing changed\n", r.GetService(), versionOrNone(r.GetFromVersion()), r.GetToVersion(), r.GetGeneration())
	if len(p.GetSpecChanges()) > 0 {
		fmt.Fprintf(w, "spec changes: %s\n", strings.Join(p.GetSpecChanges(), ", "))
	}
	if p.GetHeld() != "" {
		fmt.Fprintf(w, "held: %s\n", p.GetHeld())
	} else {
		fmt.Fprintln(w, "held: no (it would start now)")
	}
	fmt.Fprintf(w, "decision now: %s\n\n", p.GetDecision())
	unknown := map[string]bool{}
	for _, h := range p.GetUnknownHosts() {
		unknown[h] = true
	}
	tw := newTable(w)
	row(tw, "WAVE", "CANARY", "HOSTS", "UNKNOWN")
	for _, wv := range r.GetWaves() {
		var ids, unk []string
		for _, h := range wv.GetHosts() {
			ids = append(ids, h.GetHostId())
			if unknown[h.GetHostId()] {
				unk = append(unk, h.GetHostId())
			}
		}
		row(tw, fmt.Sprint(wv.GetIndex()), yesNo(wv.GetCanary()), strings.Join(ids, ","), orDash(strings.Join(unk, ",")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.GetWaves()) == 0 {
		fmt.Fprintln(w, "(no host is selected: the rollout would succeed at once)")
	}
	if n := len(p.GetUnknownHosts()); n > 0 {
		fmt.Fprintf(w, "\n%d host(s) not connected: their wave waits for them (progress deadline %s)\n", n, r.GetPolicy().GetProgressDeadline().AsDuration())
	}
	return nil
}

// rolloutOverrideCmd is `fleetwave rollout override SERVICE --reason TEXT`.
func (a *app) rolloutOverrideCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "override SERVICE --reason TEXT",
		Short: "Let the newest release roll out past deploy windows, blackouts and after (admin; audited)",
		Long: `Let the service's newest release roll out although a closed deploy window, a
blackout or a service it comes after holds it: it starts now, and its
waves are not held at boundaries. A newer release is held again. The
reason is required and recorded in the audit log and the rollout's events.`,
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return usageErrorf("--reason: must be set: say why %s may roll out now", args[0])
			}
			resp, err := call(a, cmd, "override holds of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.OverrideHoldResponse, error) {
				return c.OverrideHold(ctx, &v1.OverrideHoldRequest{Service: args[0], Reason: reason})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			o := resp.GetService().GetStatus().GetHoldOverride()
			fmt.Fprintf(a.stdout, "%s %s with %s may roll out past windows, blackouts and after (by %s: %s)\n", args[0], o.GetVersion(), rollout.SpecName(o.GetSpecRevision()), o.GetBy(), o.GetReason())
			return nil
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; at most 256 bytes; audited)")
	return cmd
}

// freezeCmd is `fleetwave freeze create|list|delete`: coordinator-wide
// blackouts.
func (a *app) freezeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "freeze",
		Short: "Coordinator-wide blackouts: no rollout starts, rollouts in flight wait at the next wave",
		Long: `A blackout (a scheduled freeze) holds every service: no rollout starts in it,
and rollouts in flight finish the wave they are in and wait at the boundary
until it ends (rollbacks are not held). Not to be confused with a service
frozen after a failed rollout (fleetwave service unfreeze).`,
	}
	var from, to, reason string
	create := &cobra.Command{
		Use:   "create --from TIME --to TIME --reason TEXT",
		Short: "Schedule a blackout (admin)",
		Long: `Schedule a blackout. TIME is RFC 3339 (2026-12-24T00:00:00Z,
2026-12-24T00:00:00+01:00), "now", or an offset from now (+2h, +30m).
At most 100 are stored and one lasts at most 90 days; ended ones are
pruned.`,
		Example: `  fleetwave freeze create --from 2026-12-24T00:00:00Z --to 2026-12-27T00:00:00Z --reason "holidays"
  fleetwave freeze create --from now --to +2h --reason "incident 4711"`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			now := time.Now()
			f, err := parseWhen("--from", from, now)
			if err != nil {
				return err
			}
			t, err := parseWhen("--to", to, now)
			if err != nil {
				return err
			}
			resp, err := call(a, cmd, "create blackout", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.CreateBlackoutResponse, error) {
				return c.CreateBlackout(ctx, &v1.CreateBlackoutRequest{From: timestamppb.New(f), To: timestamppb.New(t), Reason: reason})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp.GetBlackout())
			}
			b := resp.GetBlackout()
			fmt.Fprintf(a.stdout, "blackout %s from %s to %s: %s\n", b.GetId(), fmtTime(b.GetFrom()), fmtTime(b.GetTo()), b.GetReason())
			return nil
		}),
	}
	create.Flags().StringVar(&from, "from", "", "when it starts: RFC 3339, now, or +DURATION (required)")
	create.Flags().StringVar(&to, "to", "", "when it ends: RFC 3339, or +DURATION from now (required)")
	create.Flags().StringVar(&reason, "reason", "", "why, shown wherever it holds a rollout (required; at most 256 bytes)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the blackouts (by start)",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, _ []string) error {
			resp, err := call(a, cmd, "list blackouts", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListBlackoutsResponse, error) {
				return c.ListBlackouts(ctx, &v1.ListBlackoutsRequest{})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			now := time.Now()
			tw := newTable(a.stdout)
			row(tw, "ID", "FROM", "TO", "STATE", "BY", "REASON")
			for _, b := range resp.GetBlackouts() {
				state := "scheduled"
				switch {
				case !now.Before(b.GetTo().AsTime()):
					state = "ended"
				case !now.Before(b.GetFrom().AsTime()):
					state = "on"
				}
				row(tw, b.GetId(), fmtTime(b.GetFrom()), fmtTime(b.GetTo()), state, orDash(b.GetCreatedBy()), b.GetReason())
			}
			return tw.Flush()
		}),
	}
	del := &cobra.Command{
		Use:   "delete ID",
		Short: "End a blackout now, or cancel a scheduled one (admin)",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "delete blackout "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.DeleteBlackoutResponse, error) {
				return c.DeleteBlackout(ctx, &v1.DeleteBlackoutRequest{Id: args[0]})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			fmt.Fprintf(a.stdout, "blackout %s deleted\n", args[0])
			return nil
		}),
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

// parseWhen reads a time flag: RFC 3339, "now", or +DURATION from now.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	switch {
	case s == "":
		return time.Time{}, usageErrorf("%s: must be set (RFC 3339, now, or +DURATION)", flag)
	case s == "now":
		return now, nil
	case strings.HasPrefix(s, "+"):
		d, err := time.ParseDuration(s[1:])
		if err != nil || d < 0 {
			return time.Time{}, usageErrorf("%s: %q is not +DURATION (e.g. +2h, +30m)", flag, s)
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, usageErrorf("%s: %q is not RFC 3339 (2026-12-24T00:00:00Z), now, or +DURATION", flag, s)
	}
	return t, nil
}
