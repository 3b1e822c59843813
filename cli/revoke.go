package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// tlsRevokeCmd is `fleetwave tls revoke SERIAL|KIND:NAME|CERT-FILE`.
func (a *app) tlsRevokeCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke SERIAL|KIND:NAME|CERT-FILE [--reason TEXT]",
		Short: "Revoke a certificate, or every certificate of an identity issued until now (admin)",
		Long: `Revoke certificates: the coordinators refuse them in the TLS handshake and on
every call, and end the streams they hold open at once.

  SERIAL     one certificate by its serial number in hex (fleetwave whoami
             shows yours; openssl x509 -serial prints others; colons and
             upper case are fine). A join CA's serial revokes every
             certificate it issued.
  KIND:NAME  every certificate of an identity issued until now:
             agent:HOST-ID (as fleetwave hosts revoke), operator:NAME,
             coordinator:NAME.
  CERT-FILE  the certificate in a PEM file: its serial, kept until it
             expires.

A revocation is kept until the certificates it covers have expired (the
certificate's expiry when known, else the CA's).`,
		Example: `  fleetwave tls revoke 3f9a0c...   # one certificate
  fleetwave tls revoke operator:bob --reason "left the company"
  fleetwave tls revoke ./pki/operator-bob.pem`,
		Args: cobra.ExactArgs(1),
		RunE: run(func(cmd *cobra.Command, args []string) error {
			req, err := revokeRequest(args[0])
			if err != nil {
				return err
			}
			req.Reason = reason
			return a.revoke(cmd, req)
		}),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the list and the audit log (at most 256 bytes)")
	return cmd
}

// revokeRequest reads tls revoke's argument: an identity (a known kind
// before a colon), a certificate file, or a serial.
func revokeRequest(arg string) (*v1.RevokeCertificateRequest, error) {
	if kind, _, ok := strings.Cut(arg, ":"); ok && (kind == tlsutil.KindAgent || kind == tlsutil.KindOperator || kind == tlsutil.KindCoordinator) {
		if _, _, err := tlsutil.ParseIdentityName(arg); err != nil {
			return nil, usageErrorf("invalid identity %q: %v", arg, err)
		}
		return &v1.RevokeCertificateRequest{Identity: arg}, nil
	}
	if fi, err := os.Stat(arg); err == nil && fi.Mode().IsRegular() {
		c, err := tlsutil.ReadCertFile(arg)
		if err != nil {
			return nil, err
		}
		req := &v1.RevokeCertificateRequest{Serial: tlsutil.SerialString(c), NotAfter: timestamppb.New(c.NotAfter)}
		if id, err := tlsutil.IdentityFromCert(c); err == nil {
			req.Subject = id.Kind + ":" + id.Name
		}
		return req, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("certificate file %s: %w", arg, err)
	}
	serial, err := tlsutil.ParseSerial(arg)
	if err != nil {
		return nil, usageErrorf("invalid argument %q: not KIND:NAME, a certificate file, nor a serial (%v)", arg, err)
	}
	return &v1.RevokeCertificateRequest{Serial: serial}, nil
}

// revoke sends a revocation and prints it.
func (a *app) revoke(cmd *cobra.Command, req *v1.RevokeCertificateRequest) error {
	what := "serial " + req.GetSerial()
	if req.GetIdentity() != "" {
		what = req.GetIdentity()
	}
	resp, err := call(a, cmd, "revoke "+what, func(ctx context.Context, c v1.OperatorServiceClient) (*v1.RevokeCertificateResponse, error) {
		return c.RevokeCertificate(ctx, req)
	})
	if err != nil {
		return err
	}
	if a.jsonOutput() {
		return printJSON(a.stdout, resp)
	}
	r := resp.GetRevocation()
	if r.GetIdentity() != "" {
		fmt.Fprintf(a.stdout, "revoked every certificate of %s issued until %s (kept until %s)\n", r.GetIdentity(), fmtTime(r.GetRevokedAt()), fmtTime(r.GetExpiresAt()))
		if strings.HasPrefix(r.GetIdentity(), tlsutil.KindAgent+":") {
			host := strings.TrimPrefix(r.GetIdentity(), tlsutil.KindAgent+":")
			fmt.Fprintf(a.stdout, "to let the host back: fleetwave token create %s-join --role join --host %s\n", host, host)
		}
		return nil
	}
	subject := ""
	if r.GetSubject() != "" {
		subject = " (" + r.GetSubject() + ")"
	}
	fmt.Fprintf(a.stdout, "revoked certificate serial %s%s (kept until %s)\n", r.GetSerial(), subject, fmtTime(r.GetExpiresAt()))
	return nil
}

// tlsRevocationsCmd is `fleetwave tls revocations`.
func (a *app) tlsRevocationsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revocations",
		Short: "List the certificate revocations in force (admin)",
		Args:  cobra.NoArgs,
		RunE: run(func(cmd *cobra.Command, args []string) error {
			resp, err := call(a, cmd, "list revocations", func(ctx context.Context, c v1.OperatorServiceClient) (*v1.ListRevocationsResponse, error) {
				return c.ListRevocations(ctx, &v1.ListRevocationsRequest{})
			})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return printJSON(a.stdout, resp)
			}
			tw := newTable(a.stdout)
			row(tw, "CERTIFICATES", "REVOKED AT", "BY", "KEPT UNTIL", "REASON")
			for _, r := range resp.GetRevocations() {
				what := "every one of " + r.GetIdentity() + " issued until then"
				if r.GetSerial() != "" {
					what = "serial " + r.GetSerial()
					if r.GetSubject() != "" {
						what += " (" + r.GetSubject() + ")"
					}
				}
				row(tw, what, fmtTime(r.GetRevokedAt()), orDash(r.GetRevokedBy()), fmtTime(r.GetExpiresAt()), orDash(r.GetReason()))
			}
			return tw.Flush()
		}),
	}
}
