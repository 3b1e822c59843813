package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

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
A followed stream that breaks (the coordinator restarted) is opened again
after the last event printed, with a pause of 250ms doubling to 5s; no
event is printed twice or left out.
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
// each event whether to end (nil error) or keep going. A followed stream
// that breaks after it began (the coordinator restarted, lost etcd or its
// leader) is opened again after a pause (followBackoff) from the last
// event printed (eventCursor): no event is printed twice or missed. It
// keeps trying until it resumes, the command is interrupted or --timeout
// (when given) ends; a refusal (authentication, permission, bad request,
// the slow-reader limit) ends it at once.
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
	cur := eventCursor{since: req.GetSinceRevision()}
	opened, failures := false, 0
	for {
		r := proto.Clone(req).(*v1.WatchEventsRequest)
		r.SinceRevision = cur.resumeFrom()
		began, err := a.printEvents(ctx, c, r, &cur, stop, &failures)
		opened = opened || began
		var se stopErr
		switch {
		case err == nil:
			return nil
		case errors.As(err, &se):
			return se.err
		case errors.Is(err, errStreamEnded):
			return fmt.Errorf("%s: %w", what, err)
		}
		if cerr := ctx.Err(); cerr != nil {
			err = status.FromContextError(cerr).Err()
		}
		if !req.GetFollow() || !opened || !resumable(err) || ctx.Err() != nil {
			return a.rpcErr(what, err)
		}
		failures++
		wait := followBackoff(failures)
		fmt.Fprintf(a.stderr, "fleetwave: %s: the stream broke (%v); resuming after revision %d in %s\n", what, status.Convert(err).Message(), cur.since, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return a.rpcErr(what, status.FromContextError(ctx.Err()).Err())
		case <-t.C:
		}
	}
}

// errStreamEnded: the coordinator ended a followed stream without an
// error, which it never does (a followed stream ends only in one).
var errStreamEnded = errors.New("the coordinator ended the stream")

// printEvents opens one WatchEvents stream and prints its events until it
// ends (nil: done), stop says so, or it fails. opened: the coordinator
// accepted the stream (sent its header: the caller may resume it). failures
// is reset with each event printed.
func (a *app) printEvents(ctx context.Context, c v1.OperatorServiceClient, req *v1.WatchEventsRequest, cur *eventCursor, stop func(*v1.Event) (bool, error), failures *int) (opened bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.WatchEvents(sctx, req)
	if err != nil {
		return false, err
	}
	// A stream that failed before its header (grpc: nil, nil) fails its
	// first Recv; one that ended with its status alone was not accepted.
	md, err := stream.Header()
	if err != nil {
		return false, err
	}
	opened = md != nil
	skip := cur.skip()
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if req.GetFollow() {
				return opened, errStreamEnded
			}
			return opened, nil
		}
		if err != nil {
			return opened, err
		}
		opened = true
		if !cur.next(resp.GetRevision(), &skip) {
			continue
		}
		*failures = 0
		if a.jsonOutput() {
			if err := printJSONLine(a.stdout, resp); err != nil {
				return true, stopErr{err}
			}
		} else {
			fmt.Fprintln(a.stdout, EventLine(resp.GetEvent(), resp.GetRevision()))
		}
		if stop != nil {
			if done, err := stop(resp.GetEvent()); done || err != nil {
				if err != nil {
					return true, stopErr{err}
				}
				return true, nil
			}
		}
	}
}

// stopErr is an error of the command's own (writing, stop), not of the
// stream: it ends the command as it is.
type stopErr struct{ err error }

func (e stopErr) Error() string { return e.err.Error() }
func (e stopErr) Unwrap() error { return e.err }

// eventCursor is where a followed event stream is: the revision of the
// last event printed and how many of that revision's events were printed.
// A write's events share one revision and come in the same order from
// every listing and watch (WatchEvents), so a stream that broke inside a
// revision resumes after the revision before and skips the ones printed.
type eventCursor struct {
	since int64 // the last event's revision (or --since-revision)
	seen  int   // events of revision since printed
}

// resumeFrom is the since_revision to ask for.
func (c *eventCursor) resumeFrom() int64 {
	if c.seen > 0 {
		return c.since - 1
	}
	return c.since
}

// skip is how many events of the stream resumeFrom asks for were printed
// already.
func (c *eventCursor) skip() int { return c.seen }

// next records an event of revision rev; false if it was printed already
// (skip counts those down).
func (c *eventCursor) next(rev int64, skip *int) bool {
	if *skip > 0 && rev == c.since {
		*skip--
		return false
	}
	*skip = 0
	if rev == c.since {
		c.seen++
	} else {
		c.since, c.seen = rev, 1
	}
	return true
}

// resumable says whether a followed stream that failed with err is opened
// again: the coordinator or its etcd went away (Unavailable, Internal,
// Unknown, Aborted, or Canceled by the server: the command's own end is
// checked first), not a refusal.
func resumable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.Aborted, codes.Canceled:
		return true
	}
	return false
}

// Pauses before a followed stream is opened again: followBackoffFirst
// after it broke, doubling with each failed attempt to followBackoffMax.
const (
	followBackoffFirst = 250 * time.Millisecond
	followBackoffMax   = 5 * time.Second
)

// followBackoff is the pause before attempt n (1 = the first after the
// break) to open a followed stream again.
func followBackoff(n int) time.Duration {
	d := followBackoffFirst
	for i := 1; i < n && d < followBackoffMax; i++ {
		d *= 2
	}
	return min(d, followBackoffMax)
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
