package coordinator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/coordinator/store"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"github.com/rs/zerolog"
)

// Blackouts: bad input is refused naming the field and value and stores
// nothing; every limit (count, length, reason) is enforced; delete of an
// unknown id is NotFound. A cycle of rollout.after is refused at apply and
// stores nothing; a plan of an unknown release is NotFound.
func TestBlackoutAndOrderInputAndLimits(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	now := time.Now()
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(d)) }
	for _, c := range []struct {
		req  *v1.CreateBlackoutRequest
		want string
	}{
		{&v1.CreateBlackoutRequest{From: ts(0), Reason: "x"}, "from, to: both must be set"},
		{&v1.CreateBlackoutRequest{From: ts(time.Hour), To: ts(time.Minute), Reason: "x"}, "to: "},
		{&v1.CreateBlackoutRequest{From: ts(-2 * time.Hour), To: ts(-time.Hour), Reason: "x"}, "has passed"},
		{&v1.CreateBlackoutRequest{From: ts(0), To: ts(MaxBlackoutLength + time.Hour), Reason: "x"}, "more than 2160h0m0s"},
		{&v1.CreateBlackoutRequest{From: ts(0), To: ts(time.Hour), Reason: " "}, "reason: must be set"},
		{&v1.CreateBlackoutRequest{From: ts(0), To: ts(time.Hour), Reason: strings.Repeat("r", maxBlackoutReason+1)}, fmt.Sprintf("reason: %d bytes, more than %d", maxBlackoutReason+1, maxBlackoutReason)},
	} {
		_, err := op.CreateBlackout(ctx, c.req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CreateBlackout(%v): %v, want InvalidArgument %q", c.req, err, c.want)
		}
	}
	if l, err := op.ListBlackouts(ctx, &v1.ListBlackoutsRequest{}); err != nil || len(l.GetBlackouts()) != 0 {
		t.Fatalf("refused blackouts were stored: %v %v", l, err)
	}
	for i := range MaxBlackouts {
		if _, err := op.CreateBlackout(ctx, &v1.CreateBlackoutRequest{From: ts(time.Duration(i) * time.Minute), To: ts(time.Hour + time.Duration(i)*time.Minute), Reason: "b"}); err != nil {
			t.Fatalf("blackout %d: %v", i, err)
		}
	}
	_, err := op.CreateBlackout(ctx, &v1.CreateBlackoutRequest{From: ts(0), To: ts(time.Hour), Reason: "one too many"})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), fmt.Sprintf("%d blackouts stored, the limit %d", MaxBlackouts, MaxBlackouts)) {
		t.Errorf("blackout %d: %v", MaxBlackouts+1, err)
	}
	l, err := op.ListBlackouts(ctx, &v1.ListBlackoutsRequest{})
	if err != nil || len(l.GetBlackouts()) != MaxBlackouts {
		t.Fatalf("list: %d blackouts, %v", len(l.GetBlackouts()), err)
	}
	if _, err := op.DeleteBlackout(ctx, &v1.DeleteBlackoutRequest{Id: l.GetBlackouts()[0].GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := op.DeleteBlackout(ctx, &v1.DeleteBlackoutRequest{Id: "bo-nothere"}); status.Code(err) != codes.NotFound {
		t.Errorf("delete of an unknown blackout: %v", err)
	}
	if _, err := op.DeleteBlackout(ctx, &v1.DeleteBlackoutRequest{Id: "a/b"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `id: "a/b"`) {
		t.Errorf("delete of a bad id: %v", err)
	}

	run := &v1.RunSpec{Command: []string{"./app"}}
	for _, sp := range []*v1.ServiceSpec{
		{Name: "api", Run: run},
		{Name: "web", Run: run, Rollout: &v1.RolloutPolicy{After: []string{"api"}}},
	} {
		if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: sp}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "api", Run: run, Rollout: &v1.RolloutPolicy{After: []string{"web"}}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "rollout.after: [web] closes a cycle: api → web → api") {
		t.Errorf("a cycle: %v", err)
	}
	if s, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "api"}); err != nil || len(s.GetService().GetSpec().GetRollout().GetAfter()) != 0 {
		t.Errorf("the refused spec was stored: %v %v", s, err)
	}
	if _, err := op.PlanRollout(ctx, &v1.PlanRolloutRequest{Service: "web", Version: "v9"}); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `version: service web has no release "v9"`) {
		t.Errorf("plan of an unknown release: %v", err)
	}
	if _, err := op.OverrideHold(ctx, &v1.OverrideHoldRequest{Service: "web", Reason: "x"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "service: web has no release") {
		t.Errorf("override without a release: %v", err)
	}
}

// Two specs applied at the same time can close a cycle of rollout.after
// that neither apply saw (each checked before the other was stored; here
// the store is written directly, as the two applies would): the release
// is not held forever with "no rollout yet", it says the cycle and what to
// do, and an apply that breaks the cycle lets it start.
func TestAfterCycleAppliedConcurrentlyHoldsWithReason(t *testing.T) {
	emb, err := store.StartEmbedded(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)
	addr := runTestCoordinator(t, Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: emb.Endpoints, EtcdTLS: emb.ClientTLS, LeaseTTL: 2 * time.Second})
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	cli, err := emb.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := &v1.RunSpec{Command: []string{"./app"}}
	st := store.New(cli)
	for _, sp := range []*v1.ServiceSpec{
		{Name: "api", Run: run, Rollout: &v1.RolloutPolicy{After: []string{"web"}}},
		{Name: "web", Run: run, Rollout: &v1.RolloutPolicy{After: []string{"api"}}},
	} {
		if _, err := st.ApplySpec(ctx, sp, time.Now(), rollout.Recreate); err != nil {
			t.Fatal(err)
		}
	}
	op := v1.NewOperatorServiceClient(cc)
	art := upload(t, ctx, cc, []byte("web v1"))
	resp, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}})
	if err != nil {
		t.Fatal(err)
	}
	if want := "rollout.after closes a cycle: web → api → web (specs applied at the same time): apply one of them without it"; !strings.Contains(resp.GetNote(), want) {
		t.Errorf("release of a service on a cycle: note %q, want it to say %q", resp.GetNote(), want)
	}
	// The apply that breaks the cycle is not refused (the cycle is not of
	// its making) and lets web's release through.
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: &v1.ServiceSpec{Name: "web", Run: run}}); err != nil {
		t.Fatalf("the apply that breaks the cycle: %v", err)
	}
	testkit.EventuallyErr(t, 30*time.Second, "web's release starts once the cycle is broken", func() error {
		s, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
		if err == nil && s.GetService().GetStatus().GetLastRolloutId() == "" {
			err = fmt.Errorf("no rollout yet")
		}
		return err
	})
}

// rollout plan refuses, naming the field and value, a service that does
// not exist, a spec that fails validation, names another service or
// closes a cycle; a preview of a valid spec changes nothing stored.
func TestPlanRolloutRefusalsChangeNothing(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	run := &v1.RunSpec{Command: []string{"./app"}}
	for _, sp := range []*v1.ServiceSpec{{Name: "api", Run: run}, {Name: "web", Run: run, Rollout: &v1.RolloutPolicy{After: []string{"api"}}}} {
		if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: sp}); err != nil {
			t.Fatal(err)
		}
	}
	art := upload(t, ctx, cc, []byte("web v1"))
	if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: "v1", Artifact: art}}); err != nil {
		t.Fatal(err)
	}
	before, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req  *v1.PlanRolloutRequest
		code codes.Code
		want string
	}{
		{&v1.PlanRolloutRequest{Service: "nope"}, codes.NotFound, `service: no service "nope"`},
		{&v1.PlanRolloutRequest{Service: "Bad Name"}, codes.InvalidArgument, `service: invalid name "Bad Name"`},
		{&v1.PlanRolloutRequest{Service: "web", Version: "../v1"}, codes.InvalidArgument, `version: invalid version "../v1"`},
		{&v1.PlanRolloutRequest{Service: "web", Spec: &v1.ServiceSpec{Name: "api", Run: run}}, codes.InvalidArgument, `spec.name: "api" is not the service "web"`},
		{&v1.PlanRolloutRequest{Service: "web", Spec: &v1.ServiceSpec{Name: "web", Run: run, Rollout: &v1.RolloutPolicy{Windows: []*v1.DeployWindow{{Start: "09:00", End: "25:00"}}}}},
			codes.InvalidArgument, `rollout.windows[0].end: "25:00" is not a time of day`},
		{&v1.PlanRolloutRequest{Service: "web", Spec: &v1.ServiceSpec{Name: "web", Run: run, Rollout: &v1.RolloutPolicy{Windows: []*v1.DeployWindow{{Start: "09:00", End: "10:00", TimeZone: "Mars/Olympus"}}}}},
			codes.InvalidArgument, `rollout.windows[0].time_zone: "Mars/Olympus" is not an IANA time zone`},
	} {
		_, err := op.PlanRollout(ctx, c.req)
		if status.Code(err) != c.code || !strings.Contains(err.Error(), c.want) {
			t.Errorf("PlanRollout(%v): %v, want %s %q", c.req, err, c.code, c.want)
		}
	}
	// A valid spec previewed changes nothing.
	p, err := op.PlanRollout(ctx, &v1.PlanRolloutRequest{Service: "web", Spec: &v1.ServiceSpec{Name: "web", Run: run}})
	if err != nil || p.GetRollout().GetToVersion() != "v1" {
		t.Fatalf("plan of a valid spec: %v %v", p, err)
	}
	after, err := op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if err != nil || !proto.Equal(before.GetService(), after.GetService()) {
		t.Errorf("plan changed the service:\nbefore %v\nafter  %v (%v)", before.GetService(), after.GetService(), err)
	}
}

// TestWindowCache: a service's windows are parsed (time zones resolved)
// once, again only when they change (not on every reconcile), and an
// unparsable record's error is kept and returned the same way.
func TestWindowCache(t *testing.T) {
	svc := func(tz string) *v1.Service {
		return &v1.Service{Spec: &v1.ServiceSpec{Name: "web", Rollout: &v1.RolloutPolicy{Windows: []*v1.DeployWindow{
			{Days: "mon-fri", Start: "09:00", End: "17:00", TimeZone: tz}}}}}
	}
	var wc windowCache
	ws, err := wc.parsed(svc("Europe/Berlin"))
	if err != nil || len(ws) != 1 || ws[0].Loc.String() != "Europe/Berlin" {
		t.Fatalf("parsed = %v, %v", ws, err)
	}
	// time.LoadLocation returns a new *Location on every call: the same
	// pointer is the cached parse. The spec is a copy (as the mirror
	// decodes each revision), equal in value.
	again, err := wc.parsed(proto.Clone(svc("Europe/Berlin")).(*v1.Service))
	if err != nil || again[0].Loc != ws[0].Loc {
		t.Errorf("same windows parsed again (%p, was %p), err %v", again[0].Loc, ws[0].Loc, err)
	}
	moved, err := wc.parsed(svc("Asia/Tokyo"))
	if err != nil || moved[0].Loc.String() != "Asia/Tokyo" {
		t.Errorf("changed windows: %v, %v; want Asia/Tokyo", moved, err)
	}
	if _, err := wc.parsed(svc("Mars/Olympus")); err == nil || !strings.Contains(err.Error(), `rollout.windows[0].time_zone: "Mars/Olympus"`) {
		t.Errorf("unparsable windows: err %v, want one naming rollout.windows[0].time_zone", err)
	}
	if ws, err := wc.parsed(&v1.Service{Spec: &v1.ServiceSpec{Name: "web"}}); ws != nil || err != nil {
		t.Errorf("no windows: %v, %v", ws, err)
	}
	// Bounded: past maxCachedWindows names the cache starts again.
	for i := range maxCachedWindows + 1 {
		s := svc("UTC")
		s.Spec.Name = fmt.Sprint("svc", i)
		if _, err := wc.parsed(s); err != nil {
			t.Fatal(err)
		}
		if len(wc.m) > maxCachedWindows {
			t.Fatalf("%d entries, more than %d", len(wc.m), maxCachedWindows)
		}
	}
	// web and svc0 .. svc4094 fill it; svc4095 starts it again, svc4096
	// joins.
	if len(wc.m) != 2 {
		t.Errorf("%d entries after %d more names, want 2 (started again)", len(wc.m), maxCachedWindows+1)
	}
}
