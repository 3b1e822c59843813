package coordinator

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Reports from many streams at once are written by at most maxReportTxns
// transactions in flight, every one is stored, and each host's reports,
// sent one after the other as a stream does, end with its last one (no
// reordering between concurrent transactions).
func TestReportWriterConcurrentTransactions(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	kv := &testkit.TxnCounter{KV: cli.KV}
	cli.KV = kv
	w := newReportWriter(store.New(cli))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		w.run(ctx)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()

	const hosts = 500
	phases := []v1.Phase{v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_HEALTHY}
	var wg sync.WaitGroup
	errs := make(chan error, hosts)
	for i := range hosts {
		wg.Go(func() {
			host := fmt.Sprintf("h%03d", i)
			for _, ph := range phases {
				if err := w.put(ctx, host, &v1.ServiceReport{Service: "web", Phase: ph, TargetVersion: "v2"}); err != nil {
					errs <- fmt.Errorf("%s %v: %w", host, ph, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	resp, err := cli.Get(context.Background(), store.ReportsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != hosts {
		t.Fatalf("%d reports stored, want %d", len(resp.Kvs), hosts)
	}
	for _, e := range resp.Kvs {
		r := &v1.ServiceReport{}
		if err := proto.Unmarshal(e.Value, r); err != nil {
			t.Fatal(err)
		}
		if r.GetPhase() != v1.Phase_PHASE_HEALTHY {
			t.Errorf("%s: stored %v, want the host's last report (HEALTHY)", e.Key, r.GetPhase())
		}
	}
	most := kv.Most()
	if most > maxReportTxns {
		t.Errorf("%d transactions in flight at once, over maxReportTxns (%d)", most, maxReportTxns)
	}
	t.Logf("at most %d report transactions in flight", most)
}
