// Package hostlist reads a fleet's hosts from a coordinator in pages
// (OperatorService.ListHosts with a limit): one answer of the whole fleet
// grows with hosts × services and their reports, past what a client takes
// (14.3 MiB at 10,000 hosts with ten services each).
package hostlist

import (
	"context"
	"fmt"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// Page is how many hosts one ListHosts call asks for.
const Page = 1000

// All returns every host, by id, read Page at a time; with service set,
// each host carries only that service's report.
func All(ctx context.Context, c v1.OperatorServiceClient, service string) ([]*v1.Host, error) {
	var out []*v1.Host
	after := ""
	for {
		resp, err := c.ListHosts(ctx, &v1.ListHostsRequest{Service: service, After: after, Limit: Page})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetHosts()...)
		next := resp.GetNext()
		if next == "" {
			return out, nil
		}
		if next <= after {
			return nil, fmt.Errorf("list hosts: the coordinator's next page starts at %q, not after %q", next, after)
		}
		after = next
	}
}
