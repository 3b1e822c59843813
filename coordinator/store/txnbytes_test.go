package store

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/internal/testkit/etcdtest"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// An external etcd whose --max-txn-ops was raised to 1024 (as the README
// says to, with --etcd-max-txn-ops) keeps etcd's default
// --max-request-bytes (1.5 MiB). A step that fails a wave of 1,050 hosts
// whose reports give the longest reason (4096 bytes, validateReport)
// writes 1,050 events of about 4 KB: sized by operations only, the
// decision's transaction carried 995 of them (about 4 MB) and etcd refused
// it (request is too large) at every step, so the rollout never moved.
// The decision and its events are written, every event recorded.
func TestWriteRolloutEventsWithinRequestBytes(t *testing.T) {
	c, err := Dial([]string{etcdtest.Start(t, func(cfg *embed.Config) { cfg.MaxTxnOps = EmbeddedMaxTxnOps })})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := New(c)
	ctx := context.Background()
	if err := s.SetMaxTxnOps(EmbeddedMaxTxnOps); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckMaxTxnOps(ctx); err != nil {
		t.Fatal(err)
	}
	reason := strings.Repeat("r", 4096)
	r := &v1.Rollout{Id: "000001", Service: "web", ToVersion: "v1"}
	now := time.Now()
	var evs []*v1.Event
	for i := range 1050 {
		evs = append(evs, &v1.Event{At: timestamppb.New(now), Service: "web", RolloutId: "000001", Kind: "host_failed", Host: fmt.Sprintf("h%04d", i), Message: reason})
	}
	if _, _, err := s.WriteRollout(ctx, nil, r, RolloutBase{}, nil, 0, evs...); err != nil {
		t.Fatalf("write a decision with %d events of %d bytes: %v", len(evs), len(reason), err)
	}
	got, _, err := s.ListEvents(ctx, "web", "000001", listAll)
	if err != nil || len(got) != len(evs) {
		t.Fatalf("%d events recorded (%v), want %d", len(got), err, len(evs))
	}
	for i, e := range got {
		if e.GetHost() != fmt.Sprintf("h%04d", i) {
			t.Fatalf("event %d is for %s", i, e.GetHost())
		}
	}
}
