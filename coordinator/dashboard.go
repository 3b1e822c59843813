package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fleetwave/fleetwave/coordinator/dashboard"
	"github.com/fleetwave/fleetwave/internal/tlsutil"
)

// DefaultHTTPListen is where the dashboard listens by default with an
// embedded etcd (cmd/fleetwave-coordinator; Config.HTTPListenOptional).
const DefaultHTTPListen = "127.0.0.1:7080"

// startDashboard serves the web dashboard on Config.HTTPListen: HTTPS with
// this coordinator's certificate, or plain HTTP when insecure. It is a
// client of grpcAddr, this coordinator's own gRPC listener. It returns
// when the dashboard is listening (or did not start); serving ends with
// ctx, and wait returns once it has.
func (c *Coordinator) startDashboard(ctx context.Context, grpcAddr string) (wait func(), err error) {
	cfg := dashboard.Config{GRPCTarget: selfAddr(grpcAddr), Insecure: c.insecure, Limits: c.cfg.HTTPLimits, Name: c.cfg.Name,
		ErrorLog: stdlog.New(limitedLog{log: c.log.With().Str("component", "dashboard").Logger(), b: &bucket{rate: 5, burst: 20}, now: time.Now}, "", 0)}
	if c.insecure {
		cfg.GRPCCreds = insecure.NewCredentials()
	} else {
		sc, err := tlsutil.ServerConfig(c.cfg.TLSCert, c.cfg.TLSKey, c.cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("http-listen: %w", err)
		}
		// Browsers log in with an operator token; no client certificate
		// is asked for.
		sc.ClientAuth = tls.NoClientCert
		sc.ClientCAs = nil
		cfg.TLS = sc
		cc, err := tlsutil.ClientConfig("", "", c.cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("http-listen: %w", err)
		}
		cfg.GRPCCreds = credentials.NewTLS(cc)
	}
	if c.cfg.AlertmanagerTokenFile != "" {
		rcv, err := c.newAlertReceiver(c.cfg.AlertmanagerTokenFile)
		if err != nil {
			return nil, err
		}
		cfg.Receivers = map[string]http.Handler{AlertmanagerPath: rcv}
	}
	d, err := dashboard.New(cfg, c.log)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", c.cfg.HTTPListen)
	if err != nil {
		if c.cfg.HTTPListenOptional && errors.Is(err, syscall.EADDRINUSE) {
			c.log.Warn().Err(err).Str("addr", c.cfg.HTTPListen).Msg("dashboard not started: its default address is taken (set --http-listen)")
			return func() {}, nil
		}
		return nil, fmt.Errorf("http-listen %s: %w", c.cfg.HTTPListen, err)
	}
	scheme := "https"
	if cfg.TLS == nil {
		scheme = "http"
	}
	url := scheme + "://" + lis.Addr().String() + "/"
	c.log.Info().Str("url", url).Msg("dashboard serving")
	if c.cfg.HTTPReady != nil {
		c.cfg.HTTPReady(url)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Serve(ctx, lis); err != nil {
			c.log.Error().Err(err).Msg("dashboard stopped")
		}
	}()
	return func() { <-done }, nil
}

// limitedLog writes the dashboard's HTTP server errors (one per failed TLS
// handshake: anyone can cause them) to the log, a few a second at most.
type limitedLog struct {
	log zerolog.Logger
	b   *bucket
	now func() time.Time
}

func (l limitedLog) Write(p []byte) (int, error) {
	if l.b.allow(l.now()) {
		l.log.Warn().Msg(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// selfAddr is an address this process can dial its own listener at: the
// loopback address in place of an unspecified one.
func selfAddr(bound string) string {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			return net.JoinHostPort("127.0.0.1", port)
		}
		return net.JoinHostPort("::1", port)
	}
	return bound
}
