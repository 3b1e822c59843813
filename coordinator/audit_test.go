package coordinator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The failure log writes the first failure of a kind at once, counts the
// rest, and sums them up once the interval is over; kinds beyond its bound
// are counted together; method names it does not serve are one kind.
func TestFailureLogCoalesces(t *testing.T) {
	f := newFailureLog(time.Minute, 2)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	entry := func(actor, method, msg string) *v1.AuditEntry {
		return &v1.AuditEntry{Actor: actor, Method: method, Result: codes.PermissionDenied.String(), Message: msg}
	}
	apply := opSvc + "ApplyService"
	if !f.admit(entry("agent:h1", apply, "m0"), t0) {
		t.Fatal("the first refusal was not written")
	}
	for i := 1; i <= 999; i++ {
		if f.admit(entry("agent:h1", apply, fmt.Sprintf("m%d", i)), t0.Add(time.Duration(i)*time.Millisecond)) {
			t.Fatalf("refusal %d written, want it counted", i)
		}
	}
	if !f.admit(entry("agent:h1", "/x.Y/"+strings.Repeat("z", 50), ""), t0) {
		t.Fatal("the first call of an unknown method was not written")
	}
	if f.admit(entry("agent:h1", "/x.Y/other", ""), t0) {
		t.Error("another unknown method made a kind of its own")
	}
	// Both kinds taken: a third caller's refusals are counted together.
	for range 5 {
		if f.admit(entry("agent:h2", apply, "h2"), t0) {
			t.Fatal("a refusal beyond the bound on kinds was written")
		}
	}
	if got := f.due(t0.Add(59 * time.Second)); len(got) != 0 {
		t.Errorf("summaries before the interval ended: %v", got)
	}
	got := f.due(t0.Add(time.Minute))
	var lines []string
	for _, e := range got {
		lines = append(lines, e.GetActor()+" "+e.GetMethod()+": "+e.GetMessage())
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{
		"agent:h1 " + apply + ": 999 more like this between 2026-01-01T00:00:00Z and 2026-01-01T00:01:00Z",
		"the last: m999",
		"agent:h1 /x.Y/other: 1 more like this",
		"(many) (many): 5 failed or refused calls by more than 2 kinds",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("summaries lack %q:\n%s", want, all)
		}
	}
	if len(got) != 3 {
		t.Errorf("%d summaries, want 3:\n%s", len(got), all)
	}
	// A new interval: written at once again.
	if !f.admit(entry("agent:h1", apply, "again"), t0.Add(time.Minute)) {
		t.Error("the first refusal of a new interval was not written")
	}
}

// countAudit counts the audit entries in etcd by actor and method name.
func countAudit(t *testing.T, emb *store.Embedded) (map[string]int, []*v1.AuditEntry) {
	t.Helper()
	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	all, err := store.New(cli).ListAudit(context.Background(), 1_000_000)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, e := range all {
		n[e.GetActor()+" "+methodNameOf(e.GetMethod())]++
	}
	return n, all
}

// refuseMany has the agent h1 make refused calls: operator calls, reads of
// the audit log and the tokens, and streams for another host.
func refuseMany(t *testing.T, f *tlsFleet, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	h1 := f.dial(t, "agent-h1", "")
	op, ag := v1.NewOperatorServiceClient(h1), v1.NewAgentServiceClient(h1)
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}}}
	for i := range n {
		_, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec})
		wantCode(t, "agent applies a spec", err, codes.PermissionDenied, "")
		if i%10 != 0 {
			continue
		}
		_, err = op.ListAudit(ctx, &v1.ListAuditRequest{})
		wantCode(t, "agent reads the audit log", err, codes.PermissionDenied, "")
		_, err = op.ListTokens(ctx, &v1.ListTokensRequest{})
		wantCode(t, "agent lists tokens", err, codes.PermissionDenied, "")
		s, err := ag.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h2"}}}); err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		wantCode(t, "h1 opens h2's stream", err, codes.PermissionDenied, "")
	}
}

// A host certificate making refused calls as fast as it can (issue 13:
// 8,634 audit entries in 5 s) writes one entry per method in an interval;
// refused reads of the audit log and the tokens and refused streams for
// another host are audited too.
func TestRefusedCallsAuditedOncePerInterval(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) { c.AuditFailureInterval = time.Hour })
	const n = 2000
	start := time.Now()
	refuseMany(t, f, n)
	took := time.Since(start)
	counts, _ := countAudit(t, f.emb)
	t.Logf("%d refused calls (%.0f/s): audit entries %v", n+3*n/10, float64(n+3*n/10)/took.Seconds(), counts)
	for _, m := range []string{"ApplyService", "ListAudit", "ListTokens", "Connect"} {
		if got := counts["agent:h1 "+m]; got != 1 {
			t.Errorf("agent:h1 %s: %d audit entries, want 1", m, got)
		}
	}
}

// The refusals not written one by one are written as counts when their
// interval ends: every refusal is accounted for.
func TestRefusalCountsWritten(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) { c.AuditFailureInterval = 300 * time.Millisecond })
	const n = 300
	refuseMany(t, f, n)
	testkit.EventuallyErr(t, 30*time.Second, "every refusal in the audit log", func() error {
		_, all := countAudit(t, f.emb)
		sum, rows := 0, 0
		for _, e := range all {
			if e.GetActor() != "agent:h1" || methodNameOf(e.GetMethod()) != "ApplyService" {
				continue
			}
			rows++
			more := 0
			if _, err := fmt.Sscanf(e.GetMessage(), "%d more like this", &more); err == nil {
				sum += more
			} else {
				sum++
			}
		}
		if sum != n {
			return fmt.Errorf("%d entries account for %d of %d refusals", rows, sum, n)
		}
		return nil
	})
}

// The leader keeps the newest AuditMaxEntries audit entries.
func TestAuditKeptToMaxEntries(t *testing.T) {
	f := startTLSCoordinatorWith(t, func(c *Config) {
		c.AuditMaxEntries = 100
		c.auditPruneEvery = 100 * time.Millisecond
	})
	cli, err := f.emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli)
	ctx := context.Background()
	for i := range 150 {
		if err := st.PutAudit(ctx, &v1.AuditEntry{At: timestamppb.Now(), Actor: "test", Method: fmt.Sprint(i)}, i); err != nil {
			t.Fatal(err)
		}
	}
	testkit.EventuallyErr(t, 30*time.Second, "the audit log pruned to 100", func() error {
		n, err := st.CountAudit(ctx)
		if err == nil && n != 100 {
			err = fmt.Errorf("%d entries", n)
		}
		return err
	})
	newest, err := st.ListAudit(ctx, 1)
	if err != nil || len(newest) != 1 || newest[0].GetMethod() != "149" {
		t.Errorf("newest entry %v %v, want the last written", newest, err)
	}
}
