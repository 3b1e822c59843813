package coordinator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestCheckAgentVersion(t *testing.T) {
	for _, v := range []string{"", "dev", "test", "sim", "v0.1.0", "v0.1.1", "v1.0.0-rc.1", "v0.1.0+build.7", "0.0.1", "v0.0"} {
		if err := checkAgentVersion("hello.agent_version", v); err != nil {
			t.Errorf("%q refused: %v", v, err)
		}
	}
	for _, v := range []string{"v0.0.9", "v0.0.0", "v0.1.0-rc.1"} {
		err := checkAgentVersion("hello.agent_version", v)
		if err == nil || !strings.Contains(err.Error(), "hello.agent_version") || !strings.Contains(err.Error(), `"`+v+`"`) ||
			!strings.Contains(err.Error(), MinAgentVersion) {
			t.Errorf("%q: %v, want an error naming the field, the version and %s", v, err, MinAgentVersion)
		}
	}
}

// An agent below the minimum is refused at its hello, with an error naming
// the field, its version and the minimum, and nothing about its host is
// recorded; a numbered agent at the minimum and a development build connect.
func TestHelloRefusesAgentBelowMinimum(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connect := func(host, version string) (v1.AgentService_ConnectClient, error) {
		stream, err := v1.NewAgentServiceClient(cc).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: host, AgentVersion: version}}}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.Recv()
		return stream, err
	}
	_, err := connect("old", "v0.0.9")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `hello.agent_version: "v0.0.9" is older than `+MinAgentVersion) {
		t.Fatalf("old agent: %v", err)
	}
	for _, h := range []struct{ host, version string }{{"new", MinAgentVersion}, {"src", "dev"}} {
		if _, err := connect(h.host, h.version); err != nil {
			t.Fatalf("%s (%s): %v", h.host, h.version, err)
		}
	}
	op := v1.NewOperatorServiceClient(cc)
	testkit.EventuallyErr(t, 30*time.Second, "hosts new and src listed with their agent versions", func() error {
		resp, err := op.ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, h := range resp.GetHosts() {
			got[h.GetId()] = h.GetAgentVersion()
		}
		if _, ok := got["old"]; ok {
			t.Fatalf("the refused host was recorded: %v", got)
		}
		if got["new"] != MinAgentVersion || got["src"] != "dev" {
			return fmt.Errorf("hosts %v", got)
		}
		return nil
	})
}
