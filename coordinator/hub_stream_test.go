package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestStreamEndedFromOutside: a host's stream replaced by a newer one (here
// on the same connection) ends at once with its status, while its handler
// waits in Recv with no goroutine of its own (hub.go ends it through gRPC's
// transport stream, statusWriter); the newer stream goes on.
func TestStreamEndedFromOutside(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	hello := func(sctx context.Context) v1.AgentService_ConnectClient {
		t.Helper()
		s, err := v1.NewAgentServiceClient(cc).Connect(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatalf("first set: %v", err)
		}
		return s
	}
	old := hello(ctx)
	newer := hello(ctx)
	_, err := old.Recv()
	if status.Code(err) != codes.Canceled || !strings.Contains(err.Error(), "connection replaced") {
		t.Fatalf("the replaced stream ended with %v, want Canceled: connection replaced (DeadlineExceeded: it was never ended)", err)
	}
	// The newer stream, on the same connection, is still open.
	if err := newer.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: &v1.ServiceReport{Service: "web", Phase: v1.Phase_PHASE_HEALTHY}}}); err != nil {
		t.Fatal(err)
	}
	if newer.Context().Err() != nil {
		t.Fatalf("the newer stream ended: %v", newer.Context().Err())
	}
}
