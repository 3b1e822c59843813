package store

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/server/v3/embed"
)

// Embedded is a single-node etcd server running inside the coordinator.
type Embedded struct {
	e         *embed.Etcd
	Endpoints []string
}

// StartEmbedded starts etcd's own server code on loopback with its data in
// dir/etcd and its log in dir/etcd.log, and waits until it is ready. It picks
// free ports unless clientURL is given (e.g. "http://127.0.0.1:2379").
func StartEmbedded(dir, clientURL string, log zerolog.Logger) (*Embedded, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd dir %s: %w", dir, err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "fleetwave"
	cfg.Dir = filepath.Join(dir, "etcd")
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.MaxRequestBytes = 16 << 20
	cfg.QuotaBackendBytes = 4 << 30
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "10000"
	// A single member never talks to peers: its peer listener takes a port
	// as it binds (port 0). The client URL is also what the member
	// advertises (cluster status reads it back), so it needs a real port:
	// one that was free a moment ago, tried again with another when
	// somebody took it in between.
	pu, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	const attempts = 5
	for attempt := 1; ; attempt++ {
		u := clientURL
		if u == "" {
			p, err := pickPort()
			if err != nil {
				return nil, err
			}
			u = fmt.Sprintf("http://127.0.0.1:%d", p)
		}
		cu, err := url.Parse(u)
		if err != nil {
			return nil, fmt.Errorf("embedded etcd client url %q: %w", u, err)
		}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			if clientURL == "" && attempt < attempts && errors.Is(err, syscall.EADDRINUSE) {
				log.Warn().Err(err).Int("attempt", attempt).Msg("embedded etcd client port taken; trying another")
				continue
			}
			return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
		}
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			e.Close()
			return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, err)
		case <-time.After(60 * time.Second):
			e.Server.Stop()
			e.Close()
			return nil, fmt.Errorf("embedded etcd in %s: not ready after 60s", cfg.Dir)
		}
		log.Info().Str("endpoint", cu.String()).Str("path", cfg.Dir).Msg("embedded etcd ready")
		return &Embedded{e: e, Endpoints: []string{cu.String()}}, nil
	}
}

// pickPort chooses the embedded etcd's client port (a variable for tests).
var pickPort = freePort

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Err delivers fatal server errors.
func (e *Embedded) Err() <-chan error { return e.e.Err() }

// Close stops the server.
func (e *Embedded) Close() { e.e.Close() }
