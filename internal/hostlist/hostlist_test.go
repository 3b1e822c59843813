package hostlist

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// pager answers ListHosts from ids in pages of its own size (a
// coordinator whose limit is lower than asked), or with a broken next.
type pager struct {
	v1.OperatorServiceClient
	ids    []string
	size   int
	broken bool
	reqs   []*v1.ListHostsRequest
}

func (p *pager) ListHosts(_ context.Context, req *v1.ListHostsRequest, _ ...grpc.CallOption) (*v1.ListHostsResponse, error) {
	p.reqs = append(p.reqs, req)
	resp := &v1.ListHostsResponse{}
	for _, id := range p.ids {
		if id > req.GetAfter() && len(resp.Hosts) < min(p.size, int(req.GetLimit())) {
			resp.Hosts = append(resp.Hosts, &v1.Host{Id: id})
		}
	}
	if n := len(resp.Hosts); n > 0 && resp.Hosts[n-1].GetId() != p.ids[len(p.ids)-1] {
		resp.Next = resp.Hosts[n-1].GetId()
	}
	if p.broken {
		resp.Next = "a" // never past the hosts
	}
	return resp, nil
}

func TestAllReadsEveryPage(t *testing.T) {
	var ids []string
	for i := range 23 {
		ids = append(ids, fmt.Sprintf("h%02d", i))
	}
	p := &pager{ids: ids, size: 5}
	got, err := All(context.Background(), p, "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ids) || got[0].GetId() != "h00" || got[len(got)-1].GetId() != "h22" {
		t.Fatalf("%d hosts, want all %d in order", len(got), len(ids))
	}
	if len(p.reqs) != 5 || p.reqs[0].GetLimit() != Page || p.reqs[0].GetService() != "web" || p.reqs[1].GetAfter() != "h04" {
		t.Fatalf("requests %v, want 5 pages of limit %d for web, the second after h04", p.reqs, Page)
	}
}

func TestAllRefusesANextThatDoesNotMoveOn(t *testing.T) {
	p := &pager{ids: []string{"h1", "h2"}, size: 1, broken: true}
	_, err := All(context.Background(), p, "")
	if err == nil || !strings.Contains(err.Error(), `next page starts at "a"`) {
		t.Fatalf("a next that does not move on: %v, want an error naming it", err)
	}
}
