package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
)

// tlsCmd is `fleetwave tls`: local certificate helpers (init, join-ca: no
// coordinator call) and revocation (revoke, revocations).
func (a *app) tlsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Certificates: create a CA and certificates (local), revoke them and list revocations (admin)",
	}
	var (
		dir          string
		coordinators []string
		agents       []string
		operators    []string
		ttl, caTTL   time.Duration
		force        bool
	)
	initCmd := &cobra.Command{
		Use:   "init --dir DIR [--coordinator NAME[=HOST,...]]... [--agent HOST-ID]... [--operator NAME=ROLE]...",
		Short: "Create a CA and issue certificates for a small fleet",
		Long: `Create a root CA (ca.pem, ca-key.pem) and a join CA (join-ca.pem,
join-ca-key.pem) in DIR and issue a certificate and key for
each coordinator (coordinator-NAME.pem, naming its hosts plus localhost,
127.0.0.1 and ::1), agent (agent-HOST-ID.pem) and operator
(operator-NAME.pem, with its role: viewer, deployer or admin).
Keys are written with mode 0600, certificates 0644. An existing ca.pem is
only replaced with --force. Nothing is sent anywhere.

The root key (ca-key.pem) signs everything: keep it offline once the
certificates are issued. The join CA is an intermediate whose key can sign
agent certificates only (a name constraint every peer enforces); give it to
the coordinators that let agents join (--tls-join-ca, --tls-join-ca-key).`,
		Example: `  fleetwave tls init --dir ./pki --coordinator c1=coord.example.com,10.0.0.5 \
    --agent web-1 --agent web-2 --operator alice=admin --operator ci=deployer`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			opts, err := parseTLSInit(dir, coordinators, agents, operators, ttl, caTTL)
			if err != nil {
				return err
			}
			opts.Force = force
			if err := tlsutil.Init(dir, opts); err != nil {
				if errors.Is(err, tlsutil.ErrExists) {
					return fmt.Errorf("%w (--force replaces the CA and every certificate in the directory)", err)
				}
				return err
			}
			return a.printTLSInit(dir, opts)
		}),
	}
	f := initCmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the CA, certificates and keys into (created if missing)")
	// This --coordinator shadows the global coordinator address flag: tls
	// init makes no call.
	f.StringArrayVar(&coordinators, "coordinator", nil, "coordinator certificate NAME[=HOST,HOST...] (repeatable; hosts are DNS names or IPs)")
	f.StringArrayVar(&agents, "agent", nil, "agent certificate for HOST-ID (repeatable)")
	f.StringArrayVar(&operators, "operator", nil, "operator certificate NAME=ROLE, role viewer, deployer or admin (repeatable)")
	f.DurationVar(&ttl, "ttl", tlsutil.DefaultTTL, "validity of the issued certificates")
	f.DurationVar(&caTTL, "ca-ttl", tlsutil.DefaultCATTL, "validity of the CA")
	f.BoolVar(&force, "force", false, "replace an existing CA and certificates in --dir")
	_ = initCmd.MarkFlagRequired("dir")
	var joinDir string
	var joinTTL time.Duration
	joinCmd := &cobra.Command{
		Use:   "join-ca --dir DIR [--ttl DURATION]",
		Short: "Make a new join CA (join-ca.pem, join-ca-key.pem) from the root CA in DIR",
		Long: `Make a new join CA in DIR from the root CA there (ca.pem, ca-key.pem),
replacing join-ca.pem and join-ca-key.pem: when the join CA expires, or its
key may have leaked (then also revoke the old one: fleetwave tls revoke
OLD-join-ca.pem). Give the new pair to the coordinators and restart them.
Certificates the old one issued stay valid until they expire or are revoked.
A root made before join CAs existed (path length 0) cannot have one: make a
new root with tls init (see the README's migration).`,
		Args: cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(joinDir) == "" {
				return usageErrorf("invalid --dir %q: must not be empty", joinDir)
			}
			if joinTTL <= 0 {
				return usageErrorf("invalid --ttl %s: must be positive", joinTTL)
			}
			if err := tlsutil.InitJoinCA(joinDir, joinTTL); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "wrote %s and %s\n", filepath.Join(joinDir, tlsutil.JoinCAFile), filepath.Join(joinDir, tlsutil.JoinCAKeyFile))
			return nil
		}),
	}
	joinCmd.Flags().StringVar(&joinDir, "dir", "", "directory with the root CA (ca.pem, ca-key.pem)")
	joinCmd.Flags().DurationVar(&joinTTL, "ttl", tlsutil.DefaultJoinCATTL, "validity of the join CA (never past the root's)")
	_ = joinCmd.MarkFlagRequired("dir")
	cmd.AddCommand(initCmd, joinCmd, a.tlsRevokeCmd(), a.tlsRevocationsCmd())
	return cmd
}

// parseTLSInit checks tls init's flags and turns them into options; every
// complaint is a usage error naming the flag and the value.
func parseTLSInit(dir string, coordinators, agents, operators []string, ttl, caTTL time.Duration) (tlsutil.InitOptions, error) {
	opts := tlsutil.InitOptions{TTL: ttl, CATTL: caTTL}
	if strings.TrimSpace(dir) == "" {
		return opts, usageErrorf("invalid --dir %q: must not be empty", dir)
	}
	if ttl <= 0 {
		return opts, usageErrorf("invalid --ttl %s: must be positive", ttl)
	}
	if caTTL <= 0 {
		return opts, usageErrorf("invalid --ca-ttl %s: must be positive", caTTL)
	}
	for _, v := range coordinators {
		name, hostList, hasHosts := strings.Cut(v, "=")
		if err := (tlsutil.Identity{Kind: tlsutil.KindCoordinator, Name: name}).Validate(); err != nil {
			return opts, usageErrorf("invalid --coordinator %q: %v", v, err)
		}
		if _, dup := opts.Coordinators[name]; dup {
			return opts, usageErrorf("invalid --coordinator %q: coordinator %q given twice", v, name)
		}
		var hosts []string
		if hasHosts {
			for _, h := range strings.Split(hostList, ",") {
				if err := tlsutil.ValidHost(h); err != nil {
					return opts, usageErrorf("invalid --coordinator %q: %v", v, err)
				}
				hosts = append(hosts, h)
			}
		}
		if opts.Coordinators == nil {
			opts.Coordinators = map[string][]string{}
		}
		opts.Coordinators[name] = hosts
	}
	seen := map[string]bool{}
	for _, h := range agents {
		if err := (tlsutil.Identity{Kind: tlsutil.KindAgent, Name: h}).Validate(); err != nil {
			return opts, usageErrorf("invalid --agent %q: %v", h, err)
		}
		if seen[h] {
			return opts, usageErrorf("invalid --agent %q: given twice", h)
		}
		seen[h] = true
		opts.Agents = append(opts.Agents, h)
	}
	for _, v := range operators {
		name, role, ok := strings.Cut(v, "=")
		if !ok {
			return opts, usageErrorf("invalid --operator %q: want NAME=ROLE (role %s, %s or %s)", v, tlsutil.RoleViewer, tlsutil.RoleDeployer, tlsutil.RoleAdmin)
		}
		if err := (tlsutil.Identity{Kind: tlsutil.KindOperator, Name: name, Role: role}).Validate(); err != nil {
			return opts, usageErrorf("invalid --operator %q: %v", v, err)
		}
		if _, dup := opts.Operators[name]; dup {
			return opts, usageErrorf("invalid --operator %q: operator %q given twice", v, name)
		}
		if opts.Operators == nil {
			opts.Operators = map[string]string{}
		}
		opts.Operators[name] = role
	}
	return opts, nil
}

// printTLSInit lists the files tls init wrote.
func (a *app) printTLSInit(dir string, opts tlsutil.InitOptions) error {
	fmt.Fprintf(a.stdout, "wrote %s:\n", dir)
	tw := newTable(a.stdout)
	row(tw, "FILE", "MODE", "IDENTITY", "NOTE")
	for _, f := range opts.Files() {
		var ident, what string
		switch {
		case f.JoinCA && f.Key:
			ident, what = "-", "join CA key: only for coordinators that sign joins (--tls-join-ca-key); it signs agent certificates only"
		case f.JoinCA:
			ident, what = "-", "join CA certificate: with its key, for coordinators that sign joins (--tls-join-ca)"
		case f.Identity == (tlsutil.Identity{}) && f.Key:
			ident, what = "-", "root CA key: it signs every certificate: keep it offline, on no coordinator or host"
		case f.Identity == (tlsutil.Identity{}):
			ident, what = "-", "root CA certificate: give it to every coordinator, agent and operator (--tls-ca)"
		case f.Key:
			ident, what = f.Identity.String(), "private key"
		default:
			ident, what = f.Identity.String(), "certificate"
			if len(f.Hosts) > 0 {
				what += ", hosts " + strings.Join(f.Hosts, ",")
			}
		}
		row(tw, filepath.Join(dir, f.Name), fmt.Sprintf("%04o", f.Mode.Perm()), ident, what)
	}
	return tw.Flush()
}
