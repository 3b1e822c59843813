// Package cli is the fleetwave operator command line: a cobra command tree
// whose every remote command is one plain gRPC call (or stream) on the
// coordinator's OperatorService or ArtifactService, and whose local commands
// (tls init, keys generate, gossip keygen) make certificates and keys.
//
// It may import the generated API (proto/fleetwave/v1), internal/spec,
// internal/tlsutil, internal/signing, internal/gossip (keys only), grpc,
// cobra and protobuf, and the pure rollout engine (coordinator/rollout) for
// the rollout vocabulary: event kinds and Terminal. It must not import any
// other coordinator package, nor agent packages or the etcd client:
// everything it does, any gRPC client could do (TestCLIBinaryIsLean).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// DefaultCoordinator is the coordinator address used when neither
// --coordinator nor $FLEETWAVE_COORDINATOR is set.
const DefaultCoordinator = "127.0.0.1:7070"

// EnvCoordinator names the environment variable with the default
// coordinator address.
const EnvCoordinator = "FLEETWAVE_COORDINATOR"

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1 // any error; for `rollout watch`: the rollout failed or was superseded
	ExitWatch = 2 // `rollout watch` only: an error (bad flags, RPC failure, stream ended early)
)

const maxRecvMsgSize = 64 << 20

// Main runs the fleetwave CLI with args (without the program name) and
// returns the process exit code. It never calls os.Exit.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{
		stdout:   stdout,
		stderr:   stderr,
		getenv:   os.Getenv,
		hostname: os.Hostname,
	}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(os.Stdin)
	cmd, err := root.ExecuteContextC(ctx)
	if a.conn != nil {
		_ = a.conn.Close()
	}
	if err == nil {
		return ExitOK
	}
	code := ExitError
	if cmd != nil && cmd == a.watchCmd {
		code = ExitWatch
	}
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		if ee.err != nil {
			fmt.Fprintf(stderr, "fleetwave: %v\n", ee.err)
		}
		if ee.code != 0 {
			code = ee.code
		}
	case errors.As(err, new(*runError)):
		fmt.Fprintf(stderr, "fleetwave: %v\n", err)
	default: // usage errors, cobra's own (flags, arguments, unknown commands) or ours
		fmt.Fprintf(stderr, "fleetwave: %v\n", err)
		if cmd != nil {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
	}
	return code
}

// app holds the global flags and the lazily dialled connection.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	hostname       func() (string, error)

	coordinator string
	output      string
	timeout     time.Duration
	// transport security: TLS (CA, optional client certificate), a bearer
	// token, or explicitly none
	tlsCA, tlsCert, tlsKey, token string
	insecure                      bool

	root     *cobra.Command
	watchCmd *cobra.Command
	conn     *grpc.ClientConn
}

// runError marks an error returned by a command's own code (as opposed to
// cobra's flag and argument errors, which get a usage hint).
type runError struct{ err error }

func (e *runError) Error() string { return e.err.Error() }
func (e *runError) Unwrap() error { return e.err }

// usageError is a command's own complaint about its flags or arguments;
// Main prints it with a usage hint, as it does cobra's.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// exitError asks Main for a specific exit code; err (optional) is printed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// run adapts a command body to cobra, marking its errors as run errors.
func run(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := fn(cmd, args)
		if err == nil {
			return nil
		}
		var (
			ee *exitError
			ue *usageError
		)
		if errors.As(err, &ee) || errors.As(err, &ue) {
			return err
		}
		return &runError{err: err}
	}
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "fleetwave",
		Short: "Operate a Fleetwave deployment: services, releases, rollouts, hosts",
		Long: `fleetwave talks to a Fleetwave coordinator over gRPC.

Every command is one plain call on the coordinator's OperatorService or
ArtifactService; anything it does, any gRPC client can do.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch a.output {
			case "table", "json":
			default:
				return fmt.Errorf("invalid --output %q: want table or json", a.output)
			}
			if a.timeout < 0 {
				return fmt.Errorf("invalid --timeout %s: must not be negative", a.timeout)
			}
			if a.coordinator == "" {
				return errors.New("--coordinator must not be empty")
			}
			return nil
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	def := a.getenv(EnvCoordinator)
	if def == "" {
		def = DefaultCoordinator
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.coordinator, "coordinator", def, "coordinator gRPC address host:port ($"+EnvCoordinator+" sets the default)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "deadline for each call, 0 for none (rollout watch: only when given)")
	pf.StringVar(&a.tlsCA, "tls-ca", a.getenv("FLEETWAVE_TLS_CA"), "CA the coordinator's certificate chains to ($FLEETWAVE_TLS_CA)")
	pf.StringVar(&a.tlsCert, "tls-cert", a.getenv("FLEETWAVE_TLS_CERT"), "operator client certificate ($FLEETWAVE_TLS_CERT)")
	pf.StringVar(&a.tlsKey, "tls-key", a.getenv("FLEETWAVE_TLS_KEY"), "its key ($FLEETWAVE_TLS_KEY)")
	pf.StringVar(&a.token, "token", a.getenv("FLEETWAVE_TOKEN"), "operator bearer token, instead of a client certificate ($FLEETWAVE_TOKEN)")
	pf.BoolVar(&a.insecure, "insecure", a.getenv("FLEETWAVE_INSECURE") == "1", "plain text, for a coordinator run with --insecure ($FLEETWAVE_INSECURE=1)")
	a.root = root

	root.AddCommand(a.serviceCmd(), a.releaseCmd(), a.agentCmd(), a.rolloutCmd(), a.rollbackCmd(), a.hostsCmd(), a.clusterCmd(), newStatsCmd(a), a.eventsCmd(), a.gossipCmd(), a.tokenCmd(), a.auditCmd(), a.whoamiCmd(), a.keysCmd(), a.tlsCmd(), a.freezeCmd())
	return root
}

// bearer sends an operator token with every call (TLS only).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// dial returns the connection to the coordinator, creating it on first use.
// grpc.NewClient does not connect until the first call.
func (a *app) dial() (*grpc.ClientConn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	opts := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize))}
	switch {
	case a.tlsCA != "":
		if a.insecure {
			return nil, usageErrorf("--insecure cannot be combined with --tls-ca")
		}
		if (a.tlsCert == "") != (a.tlsKey == "") {
			return nil, usageErrorf("--tls-cert and --tls-key go together")
		}
		tc, err := tlsutil.ClientConfig(a.tlsCert, a.tlsKey, a.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if a.token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(a.token)))
		}
	case a.insecure:
		if a.token != "" {
			return nil, usageErrorf("--token is sent only over TLS: give --tls-ca")
		}
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	default:
		return nil, usageErrorf("no transport security: give --tls-ca with --tls-cert/--tls-key or --token, or --insecure for a plain-text coordinator (or set $FLEETWAVE_TLS_CA / $FLEETWAVE_INSECURE=1)")
	}
	conn, err := grpc.NewClient(a.coordinator, opts...)
	if err != nil {
		return nil, fmt.Errorf("coordinator %q: %w", a.coordinator, err)
	}
	a.conn = conn
	return conn, nil
}

func (a *app) operator() (v1.OperatorServiceClient, error) {
	conn, err := a.dial()
	if err != nil {
		return nil, err
	}
	return v1.NewOperatorServiceClient(conn), nil
}

func (a *app) artifacts() (v1.ArtifactServiceClient, error) {
	conn, err := a.dial()
	if err != nil {
		return nil, err
	}
	return v1.NewArtifactServiceClient(conn), nil
}

// call runs one OperatorService call for a command: it dials, bounds the
// call by --timeout, and turns a failure into "<what>: <status message>".
func call[T any](a *app, cmd *cobra.Command, what string, f func(ctx context.Context, c v1.OperatorServiceClient) (T, error)) (T, error) {
	var zero T
	c, err := a.operator()
	if err != nil {
		return zero, err
	}
	ctx, cancel := a.callCtx(cmd.Context())
	defer cancel()
	resp, err := f(ctx, c)
	if err != nil {
		return zero, a.rpcErr(what, err)
	}
	return resp, nil
}

// callCtx bounds one call by --timeout.
func (a *app) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}

// rpcErr turns a gRPC error into "<what>: <status message>".
func (a *app) rpcErr(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", what, err)
	}
	msg := st.Message()
	switch st.Code() {
	case codes.Unavailable:
		switch {
		case a.tlsCert != "" && strings.Contains(msg, "bad certificate"):
			msg += fmt.Sprintf(" (the coordinator refused the certificate %s: revoked, expired or not from its CA?)", a.tlsCert)
		case a.tlsCert != "":
			// A refused client certificate often shows only as a closed
			// connection (the alert loses the race with the client's writes).
			msg += fmt.Sprintf(" (is the coordinator at %s running, and does it accept the certificate %s: not revoked, not expired, from its CA?)", a.coordinator, a.tlsCert)
		default:
			msg += fmt.Sprintf(" (is the coordinator at %s running?)", a.coordinator)
		}
	case codes.DeadlineExceeded:
		msg += fmt.Sprintf(" (after --timeout %s)", a.timeout)
	}
	return &rpcError{what: what, msg: msg, code: st.Code()}
}

type rpcError struct {
	what string
	msg  string
	code codes.Code
}

func (e *rpcError) Error() string { return e.what + ": " + e.msg }

func (a *app) jsonOutput() bool { return a.output == "json" }

func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
