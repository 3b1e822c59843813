// Package etcdtest runs an etcd server in the test process, on loopback
// ports from internal/testkit/ports, with etcd's own defaults unless the
// caller tunes its configuration: for tests that need an etcd as an
// operator would run it (e.g. --max-txn-ops 128) rather than the
// coordinator's embedded one (coordinator/store.StartEmbedded).
package etcdtest

import (
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// Start runs etcd in a temporary directory (tune, if not nil, changes its
// configuration first), waits until it is ready and returns its client
// URL (plain http). It stops when the test ends.
func Start(t testing.TB, tune func(*embed.Config)) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{cfg.Dir + ".log"}
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ports.Port(t)))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", ports.Port(t)))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if tune != nil {
		tune(cfg)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		t.Fatal("etcd not ready after 60s")
	}
	return cu.String()
}
