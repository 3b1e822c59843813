package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/hostlist"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestListHostsPagesAndService: ListHosts answers hosts by id in pages
// (limit, after, next) and, with a service, only that service's report of
// each host (what a rollout's board reads); bad fields are refused and
// named. (Before: the whole fleet in one answer: 14.3 MiB at 10,000 hosts
// with ten services each, over 64 MiB with more: review.)
func TestListHostsPagesAndService(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := store.New(cli)
	const n = 25
	for i := range n {
		id := fmt.Sprintf("h%02d", i)
		if err := st.PutHost(ctx, &v1.Host{Id: id}); err != nil {
			t.Fatal(err)
		}
		for _, svc := range []string{"api", "web"} {
			if err := st.PutReport(ctx, id, &v1.ServiceReport{Service: svc, Phase: v1.Phase_PHASE_HEALTHY}); err != nil {
				t.Fatal(err)
			}
		}
	}
	op := v1.NewOperatorServiceClient(startCoordinatorOn(t, emb, nil))

	var ids []string
	after, pages := "", 0
	for {
		resp, err := op.ListHosts(ctx, &v1.ListHostsRequest{After: after, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, h := range resp.GetHosts() {
			ids = append(ids, h.GetId())
			if len(h.GetServices()) != 2 {
				t.Errorf("%s: %d services, want both", h.GetId(), len(h.GetServices()))
			}
		}
		if resp.GetNext() == "" {
			break
		}
		if resp.GetNext() != ids[len(ids)-1] {
			t.Fatalf("next %q, want the page's last host %q", resp.GetNext(), ids[len(ids)-1])
		}
		after = resp.GetNext()
	}
	if pages != 3 || len(ids) != n || ids[0] != "h00" || ids[n-1] != fmt.Sprintf("h%02d", n-1) {
		t.Fatalf("%d pages of %d hosts (%v), want 3 pages of all %d by id", pages, len(ids), ids, n)
	}
	all, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil || len(all.GetHosts()) != n || all.GetNext() != "" {
		t.Fatalf("no limit: %d hosts, next %q (%v), want all %d", len(all.GetHosts()), all.GetNext(), err, n)
	}
	web, err := hostlist.All(ctx, op, "web")
	if err != nil || len(web) != n {
		t.Fatalf("hosts with web's reports: %d (%v), want %d", len(web), err, n)
	}
	for _, h := range web {
		if len(h.GetServices()) != 1 || h.GetServices()[0].GetService() != "web" {
			t.Fatalf("%s: services %v, want web's report only", h.GetId(), h.GetServices())
		}
	}
	for _, c := range []struct {
		req  *v1.ListHostsRequest
		want string
	}{
		{&v1.ListHostsRequest{Limit: MaxListHosts + 1}, fmt.Sprintf("limit: %d", MaxListHosts+1)},
		{&v1.ListHostsRequest{Service: "Web!"}, "service:"},
		{&v1.ListHostsRequest{After: "h 1"}, "after:"},
	} {
		_, err := op.ListHosts(ctx, c.req)
		wantCode(t, fmt.Sprint(c.req), err, codes.InvalidArgument, c.want)
	}
}

// TestGetStatsDailyBounded: the days GetStats counts are bounded (a count
// per day of the window for every service: a viewer asking for 290 years
// made 105,850 per service; review), and its answer has one per day.
func TestGetStatsDailyBounded(t *testing.T) {
	op := v1.NewOperatorServiceClient(startCoordinator(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "web", Run: &v1.RunSpec{Command: []string{"./run"}}}}); err != nil {
		t.Fatal(err)
	}
	_, err := op.GetStats(ctx, &v1.GetStatsRequest{Daily: true, Since: durationpb.New(367 * 24 * time.Hour)})
	wantCode(t, "daily over 367 days", err, codes.InvalidArgument, "since: 8808h0m0s with daily, at most 8784h0m0s (366 days)")
	resp, err := op.GetStats(ctx, &v1.GetStatsRequest{Daily: true, Since: durationpb.New(366 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetFleet().GetDays()); n != 366 || len(resp.GetServices()) != 1 || len(resp.GetServices()[0].GetDays()) != 366 {
		t.Fatalf("days: fleet %d, services %v; want 366 each", n, resp.GetServices())
	}
}
