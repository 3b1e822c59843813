package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/fleetwave/fleetwave/internal/testkit/etcdtest"
)

// A coordinator told --etcd-max-txn-ops 1024 on an etcd that takes 128
// (etcd's default) refuses to start and says what to change, instead of
// failing every report batch later.
func TestEtcdMaxTxnOpsCheckedAtStart(t *testing.T) {
	endpoint := etcdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true, EtcdEndpoints: []string{endpoint}, EtcdMaxTxnOps: 1024,
		Ready: func(string) { t.Error("served with an etcd that refuses its batches") }}
	err := Run(ctx, cfg, zerolog.Nop())
	for _, want := range []string{"etcd-max-txn-ops 1024", "1024 operations", "raise etcd's --max-txn-ops"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Run: %v, want an error saying %q", err, want)
		}
	}
	if err := (&Config{Insecure: true, Listen: "127.0.0.1:7070", DataDir: "d", EtcdMaxTxnOps: 64}).Validate(); err == nil || !strings.Contains(err.Error(), "etcd-max-txn-ops: 64") {
		t.Errorf("Validate: %v, want it to name etcd-max-txn-ops 64", err)
	}
}

// Each etcd endpoint has its own --max-txn-ops, and the client sends a
// transaction to any of them: with two endpoints, one of which takes 1024
// operations and one 128 (a member not yet reconfigured), the check at
// start tries each, and refuses naming the one whose limit is lower
// (one probe through the shared client reached either, so the coordinator
// started about half of the time, and then every batch sent to the other
// endpoint failed).
func TestEtcdMaxTxnOpsCheckedOnEveryEndpoint(t *testing.T) {
	good := etcdtest.Start(t, func(cfg *embed.Config) { cfg.MaxTxnOps = 1024 })
	bad := etcdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true, EtcdEndpoints: []string{good, bad}, EtcdMaxTxnOps: 1024,
		Ready: func(string) { t.Error("served with an etcd endpoint that refuses its batches"); cancel() }}
	err := Run(ctx, cfg, zerolog.Nop())
	for _, want := range []string{"etcd-max-txn-ops 1024", "1024 operations", bad} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Run: %v, want an error saying %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), good) {
		t.Errorf("Run: %v, names %s, which takes 1024", err, good)
	}
}
