package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
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
	_, cli := embeddedEtcd(t)
	const hosts = 500
	for i := range hosts {
		if err := store.New(cli).PutHost(context.Background(), &v1.Host{Id: fmt.Sprintf("h%03d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	kv := &testkit.TxnCounter{KV: cli.KV}
	cli.KV = kv
	w := newReportWriter(store.New(cli), newMetrics())
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

	phases := []v1.Phase{v1.Phase_PHASE_FETCHING, v1.Phase_PHASE_CHECKING, v1.Phase_PHASE_HEALTHY}
	var wg sync.WaitGroup
	errs := make(chan error, hosts*len(phases))
	for i := range hosts {
		wg.Go(func() {
			host := fmt.Sprintf("h%03d", i)
			// As a stream does: one after the other, not waiting.
			var stored sync.WaitGroup
			for _, ph := range phases {
				stored.Add(1)
				w.put(host, &v1.ServiceReport{Service: "web", Phase: ph, TargetVersion: "v2"}, func(err error) {
					if err != nil {
						errs <- fmt.Errorf("%s %v: %w", host, ph, err)
					}
					stored.Done()
				})
			}
			stored.Wait()
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

// gatedKV holds every transaction at Commit until the test lets it go
// (release: nil commits it, an error fails it instead), and hands the test
// the keys of each transaction that reached Commit (entered).
type gatedKV struct {
	clientv3.KV
	entered chan []string
	release chan error
}

func newGatedKV(kv clientv3.KV) *gatedKV {
	return &gatedKV{KV: kv, entered: make(chan []string, 64), release: make(chan error)}
}

func (g *gatedKV) Txn(ctx context.Context) clientv3.Txn {
	return &gatedTxn{Txn: g.KV.Txn(ctx), g: g, ctx: ctx}
}

type gatedTxn struct {
	clientv3.Txn
	g    *gatedKV
	ctx  context.Context
	keys []string
}

func (t *gatedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *gatedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		if op.IsTxn() { // a report's put, done if its host has a record
			_, then, _ := op.Txn()
			for _, op := range then {
				t.keys = append(t.keys, string(op.KeyBytes()))
			}
			continue
		}
		t.keys = append(t.keys, string(op.KeyBytes()))
	}
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *gatedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *gatedTxn) Commit() (*clientv3.TxnResponse, error) {
	t.g.entered <- t.keys
	select {
	case err := <-t.g.release:
		if err != nil {
			return nil, err
		}
	case <-t.ctx.Done():
		return nil, t.ctx.Err()
	}
	return t.Txn.Commit()
}

// gatedWriter is a running reportWriter on a real etcd whose transactions
// wait for the test (gatedKV), and a client to read what was stored.
func gatedWriter(t *testing.T) (*reportWriter, *gatedKV, *clientv3.Client) {
	t.Helper()
	emb, cli := embeddedEtcd(t)
	wcli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wcli.Close() })
	// Reports are stored only for hosts with a record (store.PutReports).
	for _, h := range []string{"h1", "h2"} {
		if err := store.New(cli).PutHost(context.Background(), &v1.Host{Id: h}); err != nil {
			t.Fatal(err)
		}
	}
	g := newGatedKV(wcli.KV)
	wcli.KV = g
	w := newReportWriter(store.New(wcli), newMetrics())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		w.run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return w, g, cli
}

// enteredTxn waits for the next transaction to reach Commit and returns its
// keys.
func enteredTxn(t *testing.T, g *gatedKV) []string {
	t.Helper()
	select {
	case keys := <-g.entered:
		return keys
	case <-time.After(30 * time.Second):
		t.Fatal("no report transaction reached etcd within 30s")
		return nil
	}
}

// resultOf is a put callback that hands its result to a channel.
func resultOf() (func(error), chan error) {
	c := make(chan error, 1)
	return func(err error) { c <- err }, c
}

func waitResult(t *testing.T, what string, c chan error) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no result within 30s", what)
		return nil
	}
}

func storedPhase(t *testing.T, cli *clientv3.Client, host, service string) v1.Phase {
	t.Helper()
	resp, err := cli.Get(context.Background(), store.ReportKey(host, service))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return v1.Phase_PHASE_UNSPECIFIED
	}
	r := &v1.ServiceReport{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, r); err != nil {
		t.Fatal(err)
	}
	return r.GetPhase()
}

// queued reads the writer's queue for one host and service: whether a
// report is queued (and its phase) and whether one is in a transaction.
func (w *reportWriter) queued(host, service string) (v1.Phase, bool, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.q.slots[reportKey{host, service}]
	if s == nil {
		return v1.Phase_PHASE_UNSPECIFIED, false, false
	}
	if s.queued == nil {
		return v1.Phase_PHASE_UNSPECIFIED, false, s.busy
	}
	return s.queued.r.GetPhase(), true, s.busy
}

func report(svc string, ph v1.Phase) *v1.ServiceReport {
	return &v1.ServiceReport{Service: svc, Phase: ph, TargetVersion: "v2"}
}

// TestReportCoalescing: a host's FETCHING, CHECKING and HEALTHY sent while
// the transaction of its FETCHING is held: CHECKING waits behind it, and
// HEALTHY replaces CHECKING (never written); two transactions in all, the
// last one storing HEALTHY, and every put learns it was stored.
func TestReportCoalescing(t *testing.T) {
	w, g, cli := gatedWriter(t)
	fetching, fetched := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_FETCHING), fetching)
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "web") {
		t.Fatalf("first transaction writes %v, want h1's report", keys)
	}
	checking, checked := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_CHECKING), checking)
	healthy, healthied := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_HEALTHY), healthy)
	if ph, queued, busy := w.queued("h1", "web"); !queued || !busy || ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("queue for h1/web: queued %v (%v), in flight %v; want HEALTHY queued behind the transaction in flight", queued, ph, busy)
	}
	w.mu.Lock()
	n := w.q.takeable()
	w.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d reports takeable while h1's report is in flight, want 0 (never two of one host at once)", n)
	}
	g.release <- nil
	if err := waitResult(t, "FETCHING", fetched); err != nil {
		t.Fatalf("FETCHING: %v", err)
	}
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "web") {
		t.Fatalf("second transaction writes %v, want h1's report", keys)
	}
	g.release <- nil
	for what, c := range map[string]chan error{"CHECKING": checked, "HEALTHY": healthied} {
		if err := waitResult(t, what, c); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if ph := storedPhase(t, cli, "h1", "web"); ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("stored %v, want HEALTHY", ph)
	}
	if txns, written, coalesced := testutil.ToFloat64(w.txns), testutil.ToFloat64(w.written), testutil.ToFloat64(w.coalesced); txns != 2 || written != 2 || coalesced != 1 {
		t.Fatalf("metrics: %v transactions, %v written, %v coalesced; want 2, 2, 1", txns, written, coalesced)
	}
}

// TestReportOrdering: a host's outcome queued behind its earlier phase-only
// report in flight is written after it, never before nor together: the
// stored report is the outcome, and the older FETCHING never overwrites it.
// Other hosts' reports meanwhile go on.
func TestReportOrdering(t *testing.T) {
	w, g, cli := gatedWriter(t)
	fetching, fetched := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_FETCHING), fetching)
	enteredTxn(t, g)
	healthy, healthied := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_HEALTHY), healthy)
	// Another host's report is written meanwhile, by another transaction.
	other, othered := resultOf()
	w.put("h2", report("web", v1.Phase_PHASE_FETCHING), other)
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h2", "web") {
		t.Fatalf("transaction while h1's is held writes %v, want h2's report alone", keys)
	}
	g.release <- nil
	g.release <- nil
	for what, c := range map[string]chan error{"h1 FETCHING": fetched, "h2 FETCHING": othered} {
		if err := waitResult(t, what, c); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "web") {
		t.Fatalf("third transaction writes %v, want h1's HEALTHY", keys)
	}
	g.release <- nil
	if err := waitResult(t, "h1 HEALTHY", healthied); err != nil {
		t.Fatal(err)
	}
	if ph := storedPhase(t, cli, "h1", "web"); ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("stored %v, want HEALTHY (the older FETCHING overwrote it?)", ph)
	}
}

// TestReportBound: however many reports a host sends while its transaction
// is held, the writer keeps at most one queued and one in flight per host
// and service; a second service of the same host has its own pair.
func TestReportBound(t *testing.T) {
	w, g, cli := gatedWriter(t)
	first, firsted := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_FETCHING), first)
	enteredTxn(t, g)
	const burst = 1000
	results := make(chan error, 2*burst)
	for i := range burst {
		ph := v1.Phase_PHASE_CHECKING
		if i == burst-1 {
			ph = v1.Phase_PHASE_HEALTHY
		}
		w.put("h1", report("web", ph), func(err error) { results <- err })
	}
	if ph, queued, busy := w.queued("h1", "web"); !queued || !busy || ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("h1/web: queued %v (%v), in flight %v; want the last report queued, one in flight", queued, ph, busy)
	}
	w.mu.Lock()
	slots, takeable := len(w.q.slots), w.q.takeable()
	w.mu.Unlock()
	if slots != 1 || takeable != 0 {
		t.Fatalf("queue holds %d keys, %d takeable; want 1 key (h1/web) with nothing takeable", slots, takeable)
	}
	// h1's second service: written at once (a key of its own).
	w.put("h1", report("db", v1.Phase_PHASE_FETCHING), func(err error) { results <- err })
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "db") {
		t.Fatalf("transaction writes %v, want h1/db", keys)
	}
	g.release <- nil
	g.release <- nil
	if err := waitResult(t, "first", firsted); err != nil {
		t.Fatal(err)
	}
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "web") {
		t.Fatalf("transaction writes %v, want h1/web's last report", keys)
	}
	g.release <- nil
	for i := range burst + 1 {
		if err := waitResult(t, fmt.Sprintf("report %d", i), results); err != nil {
			t.Fatal(err)
		}
	}
	if ph := storedPhase(t, cli, "h1", "web"); ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("stored %v, want HEALTHY", ph)
	}
	if c := testutil.ToFloat64(w.coalesced); c != burst-1 {
		t.Fatalf("%v coalesced, want %d", c, burst-1)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.q.slots) != 0 {
		t.Fatalf("%d keys left in the queue after every write, want 0", len(w.q.slots))
	}
}

// TestReportWriteFailure: a failed transaction tells each of its reports'
// puts (and those they replaced) the error; the report queued behind it is
// still written afterwards.
func TestReportWriteFailure(t *testing.T) {
	w, g, cli := gatedWriter(t)
	fetching, fetched := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_FETCHING), fetching)
	enteredTxn(t, g)
	healthy, healthied := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_HEALTHY), healthy)
	g.release <- errors.New("etcd unreachable")
	if err := waitResult(t, "FETCHING", fetched); err == nil || !strings.Contains(err.Error(), "etcd unreachable") {
		t.Fatalf("FETCHING: %v, want the transaction's error", err)
	}
	enteredTxn(t, g)
	g.release <- nil
	if err := waitResult(t, "HEALTHY", healthied); err != nil {
		t.Fatal(err)
	}
	if ph := storedPhase(t, cli, "h1", "web"); ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("stored %v, want HEALTHY", ph)
	}
	if txns, written := testutil.ToFloat64(w.txns), testutil.ToFloat64(w.written); txns != 2 || written != 1 {
		t.Fatalf("metrics: %v transactions, %v written; want 2, 1", txns, written)
	}
}

// TestReportQueueOutcomesFirst: the queue takes reports the leader acts on
// before phase-only ones queued earlier, and a phase-only report that
// waited maxPhaseReportWait before any outcome (starvation-free), on a fake
// clock.
func TestReportQueueOutcomesFirst(t *testing.T) {
	q := newReportQueue()
	t0 := time.Unix(1_000_000, 0)
	nop := &reportDone{func(error) {}}
	q.add("slow", report("web", v1.Phase_PHASE_FETCHING), nop, t0)
	q.add("p1", report("web", v1.Phase_PHASE_CHECKING), nop, t0)
	// A queued phase-only report replaced by an outcome moves up.
	q.add("p2", report("web", v1.Phase_PHASE_FETCHING), nop, t0)
	q.add("p2", report("web", v1.Phase_PHASE_FAILED), nop, t0)
	for i := range 3 {
		q.add(fmt.Sprintf("o%d", i), report("web", v1.Phase_PHASE_HEALTHY), nop, t0)
	}
	hosts := func(b []*pendingReport) string {
		var s []string
		for _, p := range b {
			s = append(s, p.key.host)
		}
		return strings.Join(s, " ")
	}
	if got := hosts(q.take(3, t0)); got != "p2 o0 o1" {
		t.Fatalf("first batch %q, want the outcomes first, in order: p2 o0 o1", got)
	}
	// Outcomes keep coming: the phase-only reports wait, but not for ever.
	t1 := t0.Add(maxPhaseReportWait - time.Millisecond)
	q.add("o3", report("web", v1.Phase_PHASE_REVERTED), nop, t1)
	q.add("o4", report("web", v1.Phase_PHASE_REMOVED), nop, t1)
	if got := hosts(q.take(2, t1)); got != "o2 o3" {
		t.Fatalf("batch %q before the phase-only reports waited %s, want o2 o3", got, maxPhaseReportWait)
	}
	t2 := t0.Add(maxPhaseReportWait)
	q.add("o5", report("web", v1.Phase_PHASE_IDLE), nop, t2)
	if got := hosts(q.take(2, t2)); got != "slow p1" {
		t.Fatalf("batch %q after the phase-only reports waited %s, want them first: slow p1", got, maxPhaseReportWait)
	}
	if got := hosts(q.take(10, t2)); got != "o4 o5" {
		t.Fatalf("last batch %q, want o4 o5", got)
	}
	// A staged artifact counts as an outcome (the hub's stage plan).
	q.add("s1", report("web", v1.Phase_PHASE_FETCHING), nop, t2)
	q.add("s2", &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FETCHING, StagedSha256: "ab"}, nop, t2)
	if got := hosts(q.take(1, t2)); got != "s2" {
		t.Fatalf("batch %q, want the staged report first", got)
	}
}

// gatedHub is a coordinator serving the service "web" whose report
// writer's transactions wait for the test (gatedKV), and agent streams to
// it over real gRPC.
type gatedHub struct {
	t    *testing.T
	ctx  context.Context
	c    *Coordinator
	cc   *grpc.ClientConn
	g    *gatedKV
	wcli *clientv3.Client
}

func newGatedHub(t *testing.T) *gatedHub {
	t.Helper()
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	wcli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wcli.Close() })
	g := newGatedKV(wcli.KV)
	wcli.KV = g
	started := make(chan *Coordinator, 1)
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 10 * time.Second,
		started: func(c *Coordinator) {
			c.hub.reports.s = store.New(wcli) // only the report writer's transactions wait for the test
			started <- c
		}})
	c := <-started
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	if _, err := v1.NewOperatorServiceClient(cc).ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"x"}}}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, "the service in the mirror", func() bool {
		_, ok := c.mirror.Service("web")
		return ok
	})
	return &gatedHub{t: t, ctx: ctx, c: c, cc: cc, g: g, wcli: wcli}
}

// connect opens h's stream with hello.
func (gh *gatedHub) connect(hello *v1.Hello) v1.AgentService_ConnectClient {
	gh.t.Helper()
	s, err := v1.NewAgentServiceClient(gh.cc).Connect(gh.ctx)
	if err != nil {
		gh.t.Fatal(err)
	}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		gh.t.Fatal(err)
	}
	return s
}

func (gh *gatedHub) firstSet(s v1.AgentService_ConnectClient) {
	gh.t.Helper()
	if _, err := s.Recv(); err != nil {
		gh.t.Fatalf("first set: %v", err)
	}
}

func (gh *gatedHub) send(s v1.AgentService_ConnectClient, r *v1.ServiceReport) {
	gh.t.Helper()
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
		gh.t.Fatal(err)
	}
}

// stored is the report of host and service in etcd (nil: none).
func (gh *gatedHub) stored(host, service string) *v1.ServiceReport {
	gh.t.Helper()
	resp, err := gh.wcli.Get(gh.ctx, store.ReportKey(host, service))
	if err != nil {
		gh.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	r := &v1.ServiceReport{}
	if err := proto.Unmarshal(resp.Kvs[0].Value, r); err != nil {
		gh.t.Fatal(err)
	}
	return r
}

// TestReportNotStoredEndsStream: the stream no longer waits for its
// reports' transactions, yet a report that could not be stored still ends
// its stream (Unavailable), so the agent reconnects and its hello, whose
// reports are stored before the stream counts as connected, carries its
// full status again.
func TestReportNotStoredEndsStream(t *testing.T) {
	gh := newGatedHub(t)
	c, g, connect, firstSet, send := gh.c, gh.g, gh.connect, gh.firstSet, gh.send
	s := connect(&v1.Hello{HostId: "h1"})
	firstSet(s)
	send(s, report("web", v1.Phase_PHASE_FETCHING))
	enteredTxn(t, g)
	// The stream reads on while the transaction is held: its next report
	// is queued behind.
	send(s, report("web", v1.Phase_PHASE_HEALTHY))
	testkit.Eventually(t, 30*time.Second, "HEALTHY queued behind FETCHING", func() bool {
		ph, queued, busy := c.hub.reports.queued("h1", "web")
		return queued && busy && ph == v1.Phase_PHASE_HEALTHY
	})
	g.release <- errors.New("etcd unreachable")
	var err error
	for err == nil { // (assignment sets until the end)
		_, err = s.Recv()
	}
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "report not stored") || !strings.Contains(err.Error(), "etcd unreachable") {
		t.Fatalf("stream ended with %v, want Unavailable: report not stored: etcd unreachable", err)
	}
	// The report queued behind is still written (the newest status).
	enteredTxn(t, g)
	g.release <- nil
	// The agent reconnects; its hello carries its status, stored before
	// its first set.
	s2 := connect(&v1.Hello{HostId: "h1", Services: []*v1.ServiceReport{{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v2"}}})
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "web") {
		t.Fatalf("hello's transaction writes %v, want h1/web", keys)
	}
	g.release <- nil
	firstSet(s2)
	if r := gh.stored("h1", "web"); r.GetCurrentVersion() != "v2" {
		t.Fatalf("stored %v, want the hello's report", r)
	}
}

// TestHelloReportFollowsQueued: an agent reconnects while its earlier
// stream's report is still in a transaction; its hello's report equals the
// one stored before, yet is written after the one in flight (not skipped as
// unchanged), so what is stored last is the host's current status.
func TestHelloReportFollowsQueued(t *testing.T) {
	gh := newGatedHub(t)
	a := &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v1"}
	b := &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FETCHING, CurrentVersion: "v1", TargetVersion: "v2"}
	sctx, scancel := context.WithCancel(gh.ctx)
	defer scancel()
	s, err := v1.NewAgentServiceClient(gh.cc).Connect(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1", Services: []*v1.ServiceReport{a}}}}); err != nil {
		t.Fatal(err)
	}
	enteredTxn(t, gh.g)
	gh.g.release <- nil
	gh.firstSet(s)
	testkit.Eventually(t, 30*time.Second, "h1's first report in the mirror", func() bool {
		return proto.Equal(gh.c.mirror.Report("h1", "web"), a)
	})
	gh.send(s, b)
	enteredTxn(t, gh.g) // b in flight, held
	scancel()           // the stream drops
	// The agent is back on a (b's install was cancelled) and reconnects.
	s2 := gh.connect(&v1.Hello{HostId: "h1", Services: []*v1.ServiceReport{a}})
	testkit.Eventually(t, 30*time.Second, "the hello's report queued behind b", func() bool {
		ph, queued, busy := gh.c.hub.reports.queued("h1", "web")
		return queued && busy && ph == v1.Phase_PHASE_HEALTHY
	})
	gh.g.release <- nil // b
	enteredTxn(t, gh.g)
	gh.g.release <- nil // the hello's a
	gh.firstSet(s2)
	if r := gh.stored("h1", "web"); !proto.Equal(r, a) {
		t.Fatalf("stored %v, want the hello's report %v", r, a)
	}
}

// TestReportOfRemovedHostNotWritten: a report still in its transaction when
// its host is removed (DeleteHost: record and reports) is not written
// after, which would bring back report keys of a deleted host. (Failed
// before store.PutReports checked the host's record: the report key was
// stored again.) The batch's guard fails, and the batch is tried again
// with a guard per report: a second transaction.
func TestReportOfRemovedHostNotWritten(t *testing.T) {
	w, g, cli := gatedWriter(t)
	done, res := resultOf()
	w.put("h1", report("web", v1.Phase_PHASE_HEALTHY), done)
	enteredTxn(t, g)
	if err := store.New(cli).DeleteHost(context.Background(), "h1"); err != nil {
		t.Fatal(err)
	}
	g.release <- nil
	if keys := enteredTxn(t, g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "web") {
		t.Fatalf("the guarded retry writes %v, want h1/web", keys)
	}
	g.release <- nil
	if err := waitResult(t, "report of a removed host", res); err != nil {
		t.Fatalf("put: %v, want nil (nothing to store)", err)
	}
	if ph := storedPhase(t, cli, "h1", "web"); ph != v1.Phase_PHASE_UNSPECIFIED {
		t.Fatalf("stored %v for a removed host, want no report", ph)
	}
	// Other hosts' reports in the same kind of transaction are written.
	done, res = resultOf()
	w.put("h2", report("web", v1.Phase_PHASE_HEALTHY), done)
	enteredTxn(t, g)
	g.release <- nil
	if err := waitResult(t, "report of h2", res); err != nil {
		t.Fatal(err)
	}
	if ph := storedPhase(t, cli, "h2", "web"); ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("stored %v for h2, want HEALTHY", ph)
	}
}

// TestHelloNotSkippedWhileMirrorBehind: a hello's report equal to the one
// the mirror holds is written anyway while the mirror has not applied
// every report the writer stored: the mirror may still hold an older
// report than etcd's (an earlier stream's newer report written, not yet
// mirrored), and skipping the hello would leave that newer, stale report
// in etcd for good (the leader waiting on a phase the host left). (Failed
// before saveReport compared the mirror's revision: the hello was skipped
// as unchanged.) The writer's stored revision is set ahead of the mirror
// to stand for that lag.
func TestHelloNotSkippedWhileMirrorBehind(t *testing.T) {
	gh := newGatedHub(t)
	a := &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v1"}
	sctx, scancel := context.WithCancel(gh.ctx)
	s, err := v1.NewAgentServiceClient(gh.cc).Connect(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1", Services: []*v1.ServiceReport{a}}}}); err != nil {
		t.Fatal(err)
	}
	enteredTxn(t, gh.g)
	gh.g.release <- nil
	gh.firstSet(s)
	testkit.Eventually(t, 30*time.Second, "h1's report in the mirror", func() bool {
		return proto.Equal(gh.c.mirror.Report("h1", "web"), a)
	})
	scancel()
	w := gh.c.hub.reports
	w.mu.Lock()
	w.storedRev = gh.c.mirror.Rev() + 1000
	w.mu.Unlock()
	s2 := gh.connect(&v1.Hello{HostId: "h1", Services: []*v1.ServiceReport{a}})
	if keys := enteredTxn(t, gh.g); len(keys) != 1 || keys[0] != store.ReportKey("h1", "web") {
		t.Fatalf("hello's transaction writes %v, want h1/web", keys)
	}
	gh.g.release <- nil
	gh.firstSet(s2)
}

// TestOlderStreamReportAfterHelloDropped: a report the host sent on its
// old stream, read by the coordinator only after the host's new stream
// queued its hello's reports, is dropped: written after them it would leave
// the host's older status in etcd. (Failed before the writer knew the
// newest stream's hello: the old report was queued behind the hello's and
// stored last.)
func TestOlderStreamReportAfterHelloDropped(t *testing.T) {
	gh := newGatedHub(t)
	old := &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_FETCHING, CurrentVersion: "v1", TargetVersion: "v2"}
	cur := &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY, CurrentVersion: "v1"}
	s1 := gh.connect(&v1.Hello{HostId: "h1"})
	gh.firstSet(s1)
	var c1 *agentConn
	testkit.Eventually(t, 30*time.Second, "the first stream connected", func() bool {
		gh.c.hub.mu.Lock()
		defer gh.c.hub.mu.Unlock()
		c1 = gh.c.hub.conns["h1"]
		return c1 != nil
	})
	s2 := gh.connect(&v1.Hello{HostId: "h1", Services: []*v1.ServiceReport{cur}})
	enteredTxn(t, gh.g) // the hello's report in flight, held
	gh.send(s1, old)
	testkit.Eventually(t, 30*time.Second, "the old stream read its report", func() bool {
		gh.c.hub.mu.Lock()
		defer gh.c.hub.mu.Unlock()
		return proto.Equal(c1.seen["web"], old)
	})
	gh.g.release <- nil
	gh.firstSet(s2)
	testkit.Eventually(t, 30*time.Second, "no report of h1 left to write", func() bool {
		select {
		case <-gh.g.entered:
			gh.g.release <- nil
		default:
		}
		pending, _ := gh.c.hub.reports.pending("h1", "web")
		return !pending
	})
	if r := gh.stored("h1", "web"); !proto.Equal(r, cur) {
		t.Fatalf("stored %v, want the new stream's hello %v", r, cur)
	}
	if n := testutil.ToFloat64(gh.c.metrics.reportsDropped); n != 1 {
		t.Fatalf("fleetwave_coordinator_reports_dropped_total = %g, want 1 (the old stream's report)", n)
	}
}

// TestReportsDroppedCounted: of two streams of one host, the older one's
// reports are dropped, and counted, from the moment the newer one began
// its hello until it ended; the newer one's, another host's and a report
// from no stream (seq 0) are written and not counted.
func TestReportsDroppedCounted(t *testing.T) {
	w, g, cli := gatedWriter(t)
	dropped := func() float64 { return testutil.ToFloat64(w.dropped) }
	ended := w.helloBegins("h1", 2)
	done, res := resultOf()
	w.putFrom("h1", 1, report("web", v1.Phase_PHASE_FETCHING), &reportDone{done})
	if err := waitResult(t, "the older stream's report", res); err != nil {
		t.Fatalf("dropped report: %v, want nil (as if replaced)", err)
	}
	if n := dropped(); n != 1 {
		t.Fatalf("dropped %g, want 1", n)
	}
	w.putFrom("h1", 1, report("web", v1.Phase_PHASE_CHECKING), &reportDone{func(error) {}})
	if n := dropped(); n != 2 {
		t.Fatalf("dropped %g after a second report of the older stream, want 2", n)
	}
	for _, p := range []struct {
		host string
		seq  uint64
	}{{"h1", 2}, {"h2", 1}, {"h1", 0}} {
		done, res := resultOf()
		w.putFrom(p.host, p.seq, report("web", v1.Phase_PHASE_HEALTHY), &reportDone{done})
		enteredTxn(t, g)
		g.release <- nil
		if err := waitResult(t, p.host+"'s report", res); err != nil {
			t.Fatal(err)
		}
		if ph := storedPhase(t, cli, p.host, "web"); ph != v1.Phase_PHASE_HEALTHY {
			t.Fatalf("%s stream %d: stored %v, want HEALTHY", p.host, p.seq, ph)
		}
	}
	if n := dropped(); n != 2 {
		t.Fatalf("dropped %g after the newer stream's, another host's and a streamless report, want 2", n)
	}
	ended() // the newer stream ended: no stream of h1 is newer than 1 now
	done, res = resultOf()
	w.putFrom("h1", 1, report("web", v1.Phase_PHASE_FAILED), &reportDone{done})
	enteredTxn(t, g)
	g.release <- nil
	if err := waitResult(t, "a report after the newer stream ended", res); err != nil {
		t.Fatal(err)
	}
	if n := dropped(); n != 2 {
		t.Fatalf("dropped %g after the newer stream ended, want 2", n)
	}
}

// TestReportFloodKeepsOneCallback: a stream flooding reports while its
// key's transaction is held keeps one queued report with one callback (the
// stream's), not one callback per report replaced: the queue's memory is
// bounded by hosts × services, not by how fast an agent sends. (Failed
// before put callbacks had an identity: 10,000 callbacks were kept.)
func TestReportFloodKeepsOneCallback(t *testing.T) {
	w, g, cli := gatedWriter(t)
	done, res := resultOf()
	stream := &reportDone{done}
	w.putFrom("h1", 1, report("web", v1.Phase_PHASE_FETCHING), stream)
	enteredTxn(t, g)
	const flood = 10000
	for i := range flood {
		ph := v1.Phase_PHASE_CHECKING
		if i%2 == 1 {
			ph = v1.Phase_PHASE_HEALTHY
		}
		w.putFrom("h1", 1, report("web", ph), stream)
	}
	w.mu.Lock()
	n := len(w.q.slots[reportKey{"h1", "web"}].queued.done)
	w.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d callbacks kept for one queued report, want 1", n)
	}
	g.release <- nil // FETCHING
	if err := waitResult(t, "FETCHING", res); err != nil {
		t.Fatal(err)
	}
	enteredTxn(t, g)
	g.release <- nil // the last of the flood
	if err := waitResult(t, "the flood's last report", res); err != nil {
		t.Fatal(err)
	}
	if ph := storedPhase(t, cli, "h1", "web"); ph != v1.Phase_PHASE_HEALTHY {
		t.Fatalf("stored %v, want the last report (HEALTHY)", ph)
	}
}
