package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// eventsCmd is `fleetwave events [SERVICE] [--rollout ID] [--follow]`.
func (a *app) eventsCmd() *cobra.Command {
	var rolloutID string
	var follow bool
	var since int64
	cmd := &cobra.Command{
		Use:   "events [SERVICE] [--rollout ID] [--follow] [--since-revision N]",
		Short: "Print recorded rollout events (every service by default), and with --follow every new one as it happens",
		Long: `Print the recorded events (rollouts created, waves started and done, hosts
updated, failed, reverted or unknown, rollouts failed, rolled back or
superseded, approvals, freezes, alerts), oldest first. With --follow the
command keeps streaming new events until interrupted; each line starts with
the event's etcd revision, and --since-revision N resumes after revision N.
With -o json each event is one line of JSON (an event with its revision).`,
		Args: cobra.MaximumNArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			service := ""
			if len(args) == 1 {
				service = args[0]
			}
			if rolloutID != "" && service == "" {
				return usageErrorf("--rollout needs a SERVICE")
			}
			if since < 0 {
				return usageErrorf("invalid --since-revision %d: want 0 or more", since)
			}
			return a.streamEvents(cmd, &v1.WatchEventsRequest{Service: service, RolloutId: rolloutID, Follow: follow, SinceRevision: since}, nil)
		}),
	}
	cmd.Flags().StringVar(&rolloutID, "rollout", "", "only this rollout of SERVICE (six digits, e.g. 000003)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new events")
	cmd.Flags().Int64Var(&since, "since-revision", 0, "only events written after this etcd revision")
	return cmd
}

// streamEvents prints a WatchEvents stream. stop, if set, is asked after
// each event whether to end (nil error) or keep going.
func (a *app) streamEvents(cmd *cobra.Command, req *v1.WatchEventsRequest, stop func(*v1.Event) (bool, error)) error {
	c, err := a.operator()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	// A followed stream has no end: --timeout bounds it only when given.
	if !req.GetFollow() || (a.root.PersistentFlags().Changed("timeout") && a.timeout > 0) {
		var cancel context.CancelFunc
		ctx, cancel = a.callCtx(ctx)
		defer cancel()
	}
	what := "events"
	if req.GetService() != "" {
		what = "events of " + req.GetService()
	}
	stream, err := c.WatchEvents(ctx, req)
	if err != nil {
		return a.rpcErr(what, err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if req.GetFollow() {
				return fmt.Errorf("%s: the coordinator ended the stream", what)
			}
			return nil
		}
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				err = status.FromContextError(cerr).Err()
			}
			return a.rpcErr(what, err)
		}
		if a.jsonOutput() {
			if err := printJSONLine(a.stdout, resp); err != nil {
				return err
			}
		} else {
			fmt.Fprintln(a.stdout, EventLine(resp.GetEvent(), resp.GetRevision()))
		}
		if stop != nil {
			if done, err := stop(resp.GetEvent()); done || err != nil {
				return err
			}
		}
	}
}

// EventLine formats one event on one line: revision, time, service/rollout,
// kind, wave, host, actor and message.
func EventLine(e *v1.Event, rev int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s %s", rev, fmtTime(e.GetAt()), e.GetService())
	if e.GetRolloutId() != "" {
		b.WriteString("/" + e.GetRolloutId())
	}
	b.WriteString(" " + e.GetKind())
	if e.GetWave() >= 0 {
		fmt.Fprintf(&b, " wave=%d", e.GetWave())
	}
	if e.GetHost() != "" {
		b.WriteString(" host=" + e.GetHost())
	}
	if e.GetActor() != "" {
		b.WriteString(" by=" + e.GetActor())
	}
	if e.GetMessage() != "" {
		b.WriteString(": " + e.GetMessage())
	}
	return b.String()
}
