package coordinator

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleetwave/fleetwave/coordinator/store"
)

// A leader-only call on a coordinator that does not lead fails fast with the
// one ErrNotLeader, which callers see as Unavailable.
func TestCallWhenNotLeading(t *testing.T) {
	l := newLeader(&Coordinator{cfg: Config{Name: "c2"}})
	_, _, err := l.call(context.Background(), leaderReq{service: "web", op: opApprove})
	if !errors.Is(err, store.ErrNotLeader) || !strings.Contains(err.Error(), "c2") {
		t.Fatalf("call on a follower: %v, want store.ErrNotLeader naming c2", err)
	}
	if got := status.Code(grpcErr(err)); got != codes.Unavailable {
		t.Errorf("grpcErr gives %v, want Unavailable", got)
	}
}
