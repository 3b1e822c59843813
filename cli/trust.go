package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// tokenCmd is `fleetwave token create|list|revoke` (admin).
func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Operator bearer tokens and one-time agent join tokens (admin)"}
	var role, host string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create NAME --role viewer|deployer|admin|join [--host HOST-ID] [--ttl DURATION]",
		Short: "Create a token; its secret is printed once",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			switch role {
			case "viewer", "deployer", "admin", "join":
			default:
				return usageErrorf("invalid --role %q: want viewer, deployer, admin or join", role)
			}
			if ttl < 0 {
				return usageErrorf("invalid --ttl %s: must not be negative", ttl)
			}
			req := &v1.CreateTokenRequest{Name: args[0], Role: role, HostId: host}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			resp, err := call(a, cmd, "create token "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.CreateTokenResponse, error) {
				return c.CreateToken(ctx, req)
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			t := resp.GetToken()
			fmt.Fprintf(a.stdout, "token %s (%s, role %s", t.GetId(), t.GetName(), t.GetRole())
			if t.GetHostId() != "" {
				fmt.Fprintf(a.stdout, ", host %s", t.GetHostId())
			}
			if t.GetExpiresAt() != nil {
				fmt.Fprintf(a.stdout, ", expires %s", fmtTime(t.GetExpiresAt()))
			}
			fmt.Fprintf(a.stdout, ")\nsecret (shown only now): %s\n", resp.GetSecret())
			return nil
		}),
	}
	create.Flags().StringVar(&role, "role", "", "viewer, deployer, admin, or join (a one-time agent join token)")
	create.Flags().StringVar(&host, "host", "", "join tokens: the only host id it may join as")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (default: none for operator tokens, 1h for join tokens)")
	_ = create.MarkFlagRequired("role")

	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "list tokens", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListTokensResponse, error) {
				return c.ListTokens(ctx, &v1.ListTokensRequest{})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			tw := newTable(a.stdout)
			row(tw, "ID", "NAME", "ROLE", "HOST", "CREATED", "EXPIRES", "USED", "BY")
			for _, t := range resp.GetTokens() {
				row(tw, t.GetId(), t.GetName(), t.GetRole(), orDash(t.GetHostId()), fmtTime(t.GetCreatedAt()), fmtTime(t.GetExpiresAt()), yesNo(t.GetUsed()), orDash(t.GetCreatedBy()))
			}
			return tw.Flush()
		}),
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token at once",
		Args:  cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			_, err := call(a, cmd, "revoke token "+args[0], func(ctx context.Context, c v1.OperatorServiceClient) (*v1.RevokeTokenResponse, error) {
				return c.RevokeToken(ctx, &v1.RevokeTokenRequest{Id: args[0]})
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "token %s revoked\n", args[0])
			return nil
		}),
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

// auditCmd is `fleetwave audit [--limit N]` (admin).
func (a *app) auditCmd() *cobra.Command {
	var limit uint32
	cmd := &cobra.Command{
		Use:   "audit [--limit N]",
		Short: "The audit log: every mutating call (who, what, when, from where, result), newest last",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if limit == 0 || limit > 10000 {
				return usageErrorf("invalid --limit %d: want 1 to 10000", limit)
			}
			resp, err := call(a, cmd, "audit log", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListAuditResponse, error) {
				return c.ListAudit(ctx, &v1.ListAuditRequest{Limit: limit})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			tw := newTable(a.stdout)
			row(tw, "TIME", "ACTOR", "ROLE", "CALL", "TARGET", "FROM", "RESULT", "COORDINATOR")
			for _, e := range resp.GetEntries() {
				res := e.GetResult()
				if e.GetMessage() != "" {
					res += ": " + e.GetMessage()
				}
				row(tw, fmtTime(e.GetAt()), e.GetActor(), orDash(e.GetRole()), methodName(e.GetMethod()), orDash(e.GetTarget()), orDash(e.GetPeer()), res, orDash(e.GetCoordinator()))
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().Uint32Var(&limit, "limit", 100, "how many of the newest entries")
	return cmd
}

func methodName(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

// whoamiCmd is `fleetwave whoami`.
func (a *app) whoamiCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Who the coordinator takes you for, and your role",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "whoami", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.WhoAmIResponse, error) {
				return c.WhoAmI(ctx, &v1.WhoAmIRequest{})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			fmt.Fprintf(a.stdout, "%s (role %s, by %s)\n", resp.GetIdentity(), orDash(resp.GetRole()), resp.GetMethod())
			if resp.GetSerial() != "" {
				fmt.Fprintf(a.stdout, "certificate serial %s, expires %s\n", resp.GetSerial(), fmtTime(resp.GetNotAfter()))
			}
			return nil
		}),
	}
}
