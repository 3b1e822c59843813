package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	"github.com/spf13/cobra"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/hostlist"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func (a *app) rolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Show, watch and approve rollouts",
	}
	var statusID string
	st := &cobra.Command{
		Use:   "status SERVICE [--id ID]",
		Short: "Show a rollout (the newest one by default): waves and hosts",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "get rollout of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.GetRolloutResponse, error) {
				return c.GetRollout(ctx, &v1.GetRolloutRequest{Service: args[0], Id: statusID})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				if resp.GetRollout() == nil {
					return printJSON(a.stdout, resp) // only what waits
				}
				return printJSON(a.stdout, resp.GetRollout())
			}
			if resp.GetWaiting() != "" {
				fmt.Fprintf(a.stdout, "waiting: %s\n", resp.GetWaiting())
			}
			if resp.GetRollout() == nil {
				return nil
			}
			return printRollout(a.stdout, resp.GetRollout())
		}),
	}
	st.Flags().StringVar(&statusID, "id", "", "rollout id (default: the newest)")

	var watchID string
	var watchEvents bool
	watch := &cobra.Command{
		Use:   "watch SERVICE [--id ID]",
		Short: "Follow a rollout until it ends; exit 0 succeeded, 1 failed or superseded, 2 error",
		Long: `Follow a rollout until it ends, printing a line for each change.

Exit status: 0 when the rollout succeeded, 1 when it failed or was
superseded, 2 on any error (including the stream ending early). --timeout
bounds the whole watch only when it is given. With -o json every snapshot
is printed as one line of JSON. With --events the rollout's recorded
events are printed instead (the same lines as fleetwave events), from its
creation until it ends.`,
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if watchEvents {
				return a.watchByEvents(cmd, args[0], watchID)
			}
			return a.watch(cmd.Context(), args[0], watchID)
		}),
	}
	watch.Flags().StringVar(&watchID, "id", "", "rollout id (default: the newest)")
	watch.Flags().BoolVar(&watchEvents, "events", false, "print the rollout's recorded events (WatchEvents) instead of snapshot changes")
	a.watchCmd = watch

	var approveWave uint32
	approve := &cobra.Command{
		Use:   "approve SERVICE [--wave N]",
		Short: "Start a rollout that waits for approval (manual mode), or let the next wave start (approve_each_wave)",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "approve rollout of "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ApproveRolloutResponse, error) {
				return c.ApproveRollout(ctx, &v1.ApproveRolloutRequest{Service: args[0], Wave: approveWave})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp.GetRollout())
			}
			ro := resp.GetRollout()
			fmt.Fprintf(a.stdout, "rollout %s approved: %s → %s (%s)\n", ro.GetId(),
				versionOrNone(ro.GetFromVersion()), ro.GetToVersion(), rolloutState(ro.GetState()))
			return nil
		}),
	}
	approve.Flags().Uint32Var(&approveWave, "wave", 0, "the wave to approve when the policy approves each wave (default: whatever waits)")
	cmd.AddCommand(st, watch, approve, a.pauseCmd(), a.resumeCmd(), a.abortCmd(), a.historyCmd(), a.rolloutPlanCmd(), a.rolloutOverrideCmd())
	return cmd
}

// watch follows WatchRollout, printing DiffRollout's lines for each
// snapshot, and ends with the exit code the rollout's end calls for.
func (a *app) watch(ctx context.Context, service, id string) error {
	c, err := a.operator()
	if err != nil {
		return err
	}
	if a.root.PersistentFlags().Changed("timeout") && a.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.WatchRollout(ctx, &v1.WatchRolloutRequest{Service: service, Id: id})
	if err != nil {
		return a.rpcErr("watch rollout of "+service, err)
	}
	var prev *v1.Rollout
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("watch rollout of %s: the coordinator ended the stream before the rollout ended", service)
		}
		if err != nil {
			// When our own deadline ended the stream, say so, whatever
			// transport error it surfaced as: the deadline travels to the
			// coordinator, whose timer can fire (and reset the stream) a
			// moment before ours.
			if cerr := ctx.Err(); cerr != nil {
				err = status.FromContextError(cerr).Err()
			} else if dl, ok := ctx.Deadline(); ok && time.Until(dl) < 100*time.Millisecond {
				err = status.FromContextError(context.DeadlineExceeded).Err()
			}
			return a.rpcErr("watch rollout of "+service, err)
		}
		cur := resp.GetRollout()
		if cur == nil {
			continue
		}
		if a.jsonOutput() {
			if err := printJSONLine(a.stdout, cur); err != nil {
				return err
			}
		} else {
			for _, line := range DiffRollout(prev, cur) {
				fmt.Fprintln(a.stdout, line)
			}
		}
		prev = cur
		switch cur.GetState() {
		case v1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
			return nil
		case v1.RolloutState_ROLLOUT_STATE_FAILED, v1.RolloutState_ROLLOUT_STATE_SUPERSEDED:
			return &exitError{code: ExitError}
		}
	}
}

// rolloutEndKinds are the events that end a rollout, with the exit status.
var rolloutEndKinds = map[string]int{
	rollout.EventRolloutSucceeded:  0,
	rollout.EventRolloutFailed:     ExitError,
	rollout.EventRolloutAborted:    ExitError,
	rollout.EventRolloutSuperseded: ExitError,
}

// watchByEvents follows a rollout through its event stream until an event
// ends it; exit status as for watch.
func (a *app) watchByEvents(cmd *cobra.Command, service, id string) error {
	ro, err := call(a, cmd, "get rollout of "+service, func(ctx context.Context, c v1.OperatorServiceClient) (*v1.GetRolloutResponse, error) {
		return c.GetRollout(ctx, &v1.GetRolloutRequest{Service: service, Id: id})
	})
	if err != nil {
		return err
	}
	r := ro.GetRollout()
	if r == nil { // no rollout yet, only a release that waits
		return fmt.Errorf("service %s has no rollout yet: %s", service, ro.GetWaiting())
	}
	code := -1
	stop := func(e *v1.Event) (bool, error) {
		c, ok := rolloutEndKinds[e.GetKind()]
		if !ok {
			return false, nil
		}
		code = c
		return true, nil
	}
	end := func() error {
		switch {
		case code == 0:
			return nil
		case code > 0:
			return &exitError{code: code}
		}
		return fmt.Errorf("watch rollout of %s: the event stream ended before the rollout did", service)
	}
	terminal := rollout.Terminal(r)
	if err := a.streamEvents(cmd, &v1.WatchEventsRequest{Service: service, RolloutId: r.GetId(), Follow: !terminal}, stop); err != nil {
		return err
	}
	if terminal && code < 0 {
		// Ended without an end event (e.g. nothing to do): go by its state.
		if r.GetState() == v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			return nil
		}
		return &exitError{code: ExitError}
	}
	return end()
}

// doneOfTotal is a wave's "DONE/TOTAL" column: "-/TOTAL" once its
// rollout's hosts were compacted.
func doneOfTotal(ro *v1.Rollout, wv *v1.Wave) string {
	if ro.GetHostsCompacted() {
		return fmt.Sprintf("-/%d", rollout.WaveHosts(ro, wv))
	}
	return fmt.Sprintf("%d/%d", hostsDone(wv), len(wv.GetHosts()))
}

func printRollout(w io.Writer, ro *v1.Rollout) error {
	kind := "rollout"
	switch {
	case ro.GetRollback():
		kind = "rollback"
	case ro.GetRemove():
		kind = "removal"
	case rollout.IsConfig(ro):
		kind = "config rollout"
	}
	fmt.Fprintf(w, "%s %s of %s: %s, %s (generation %d)\n", kind, ro.GetId(), ro.GetService(),
		rollout.Describe(ro), rolloutState(ro.GetState()), ro.GetGeneration())
	if ro.GetSpecRevision() > 0 {
		fmt.Fprintf(w, "spec: %s%s\n", rollout.SpecName(ro.GetSpecRevision()), changesNote(ro.GetSpecChanges()))
	}
	if n := rollout.InPlaceNote(ro); n != "" {
		fmt.Fprintln(w, n)
	}
	fmt.Fprintf(w, "created %s, started %s, finished %s\n", fmtTime(ro.GetCreatedAt()), fmtTime(ro.GetStartedAt()), fmtTime(ro.GetFinishedAt()))
	if ro.GetReason() != "" {
		fmt.Fprintf(w, "reason: %s\n", ro.GetReason())
	}
	if ro.GetHeld() != "" {
		fmt.Fprintf(w, "held at the next wave: %s\n", ro.GetHeld())
	}
	fmt.Fprintln(w)
	tw := newTable(w)
	row(tw, "WAVE", "CANARY", "STATE", "DONE/TOTAL", "FAILURES", "BAKE UNTIL")
	for _, wv := range ro.GetWaves() {
		row(tw, strconv.Itoa(int(wv.GetIndex())), yesNo(wv.GetCanary()), waveState(wv.GetState()),
			doneOfTotal(ro, wv), strconv.Itoa(int(wv.GetFailures())), fmtTime(wv.GetBakeUntil()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if n := rollout.CompactedNote(ro); n != "" {
		// An old rollout: its hosts' progress was pruned, not lost silently.
		_, err := fmt.Fprintln(w, n)
		return err
	}
	tw = newTable(w)
	row(tw, "HOST", "WAVE", "STATE", "PHASE", "UNKNOWN", "REASON")
	for _, wv := range ro.GetWaves() {
		for _, h := range wv.GetHosts() {
			row(tw, h.GetHostId(), strconv.Itoa(int(wv.GetIndex())), hostState(h.GetState()), hostPhase(h),
				yesNo(h.GetUnknown()), orDash(h.GetReason()))
		}
	}
	return tw.Flush()
}

func (a *app) hostsCmd() *cobra.Command {
	cmd := a.hostsListCmd()
	cmd.AddCommand(&cobra.Command{
		Use:   "remove HOST-ID",
		Short: "Forget a decommissioned host (admin): its record and reports; refused while its agent is connected",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if _, err := call(a, cmd, "remove host "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.RemoveHostResponse, error) {
				return c.RemoveHost(ctx, &v1.RemoveHostRequest{HostId: args[0]})
			}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "host %s removed; new rollouts no longer plan it\n", args[0])
			return nil
		}),
	})
	var reason string
	revoke := &cobra.Command{
		Use:   "revoke HOST-ID [--reason TEXT]",
		Short: "Revoke every certificate issued to a host until now (admin): its stream ends at once, it cannot reconnect",
		Long: `Revoke every certificate of agent:HOST-ID issued until now, from tls init or
joined: the coordinators refuse them in the TLS handshake and on every call,
and end the host's stream at once. The host gets a new certificate only by
joining with a join token created after the revocation:

  fleetwave token create HOST-ID-join --role join --host HOST-ID

(on the host: the new token in the join token file, DATA-DIR/tls removed,
the agent restarted). The services the host runs keep running.`,
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			return a.revoke(cmd, &v1.RevokeCertificateRequest{Identity: "agent:" + args[0], Reason: reason})
		}),
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why, for the list and the audit log (at most 256 bytes)")
	cmd.AddCommand(revoke)
	return cmd
}

func (a *app) hostsListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "hosts",
		Short: "List hosts: stream (which coordinator), gossip state, agent version, labels, and per service phase current/last good",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "list hosts", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListHostsResponse, error) {
				hosts, err := hostlist.All(ctx, c, "")
				return &v1.ListHostsResponse{Hosts: hosts}, err
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			tw := newTable(a.stdout)
			row(tw, "HOST", "CONNECTED", "STREAM", "GOSSIP", "AGENT", "CGROUPS", "LABELS", "SERVICES (phase current/last good)")
			for _, h := range resp.GetHosts() {
				var svcs string
				for i, s := range h.GetServices() {
					if i > 0 {
						svcs += ", "
					}
					phase := phaseName(s.GetPhase())
					if !h.GetConnected() {
						// What a host said before its stream dropped is history.
						phase = "unknown, last reported " + phase
					}
					svcs += fmt.Sprintf("%s=%s %s/%s", s.GetService(), phase,
						orDash(s.GetCurrentVersion()), orDash(s.GetLastGoodVersion()))
					if b := s.GetBadSource(); b != "" {
						// The last peer whose bytes failed verification.
						svcs += " (bad peer " + b + ")"
					}
				}
				// The mode alone ("v1", "none"); --json has the parent or the reason.
				cg, _, _ := strings.Cut(h.GetCgroups(), " ")
				row(tw, h.GetId(), yesNo(h.GetConnected()), orDash(h.GetCoordinator()), orDash(h.GetGossip()), orDash(h.GetAgentVersion()), orDash(strings.TrimSuffix(cg, ":")), fmtLabels(h.GetLabels()), orDash(svcs))
			}
			return tw.Flush()
		}),
	}
}
