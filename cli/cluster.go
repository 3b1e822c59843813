package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func (a *app) clusterCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "The control plane: coordinators, rollout leader, etcd members"}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the coordinators (the leader marked), the agents each serves, and every etcd member with its health",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "cluster status", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ClusterStatusResponse, error) {
				return c.ClusterStatus(ctx, &v1.ClusterStatusRequest{})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			return printCluster(a, resp)
		}),
	})
	return cmd
}

func printCluster(a *app, resp *v1.ClusterStatusResponse) error {
	leader := resp.GetLeader()
	if leader == "" {
		leader = "none elected"
	}
	fmt.Fprintf(a.stdout, "rollout leader: %s (answered by %s)\n\n", leader, resp.GetAnsweredBy())
	tw := newTable(a.stdout)
	row(tw, "COORDINATOR", "ADDRESS", "ROLE", "AGENTS", "GOSSIP", "VERSION", "STARTED")
	for _, c := range resp.GetCoordinators() {
		role := "follower"
		if c.GetLeader() {
			role = "leader"
		}
		started := "-"
		if c.GetStartedAt() != nil {
			started = c.GetStartedAt().AsTime().Local().Format("2006-01-02 15:04:05")
		}
		row(tw, c.GetName(), c.GetAddress(), role, fmt.Sprint(c.GetAgents()), orDash(c.GetGossipAddress()), orDash(c.GetVersion()), started)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	tw = newTable(a.stdout)
	row(tw, "ETCD MEMBER", "CLIENT URLS", "HEALTH", "ROLE", "DB SIZE", "RAFT TERM", "RAFT INDEX")
	healthy := 0
	for _, m := range resp.GetEtcdMembers() {
		health := "healthy"
		if !m.GetHealthy() {
			health = "unhealthy: " + m.GetError()
		} else {
			healthy++
		}
		role := "follower"
		switch {
		case m.GetLeader():
			role = "leader"
		case m.GetLearner():
			role = "learner"
		case !m.GetHealthy():
			role = "-"
		}
		size := "-"
		if m.GetDbSizeBytes() > 0 {
			size = fmt.Sprintf("%.1f MiB", float64(m.GetDbSizeBytes())/(1<<20))
		}
		row(tw, orDash(m.GetName()), orDash(strings.Join(m.GetClientUrls(), ",")), health, role, size, fmt.Sprint(m.GetRaftTerm()), fmt.Sprint(m.GetRaftIndex()))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	n := len(resp.GetEtcdMembers())
	if n > 0 && healthy <= n/2 {
		fmt.Fprintf(a.stdout, "\netcd has no quorum: %d of %d members healthy; rollouts cannot advance\n", healthy, n)
	}
	return nil
}
