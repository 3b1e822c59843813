package coordinator

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// stageFleet is a fleet of fake agents on real streams that install v1 at
// once, never finish any other release, and record each host's latest
// Assignment.stage.
type stageFleet struct {
	mu      sync.Mutex
	stage   map[string]string // host → version its latest assignment stages ("": none)
	streams map[string]v1.AgentService_ConnectClient
	last    map[string]*v1.ServiceReport
}

func (f *stageFleet) run(ctx context.Context, t *testing.T, cc *grpc.ClientConn, id string) {
	s, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Error(err)
		return
	}
	hello := &v1.Hello{HostId: id, Labels: map[string]string{"role": "web"}, PeerAddress: id + ":7000"}
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		t.Error(err)
		return
	}
	f.mu.Lock()
	f.streams[id] = s
	f.mu.Unlock()
	gens := map[string]int64{}
	for {
		m, err := s.Recv()
		if err != nil {
			return
		}
		for _, a := range m.GetAssignments() {
			f.mu.Lock()
			f.stage[id] = a.GetStage().GetVersion()
			f.mu.Unlock()
			v := a.GetRelease().GetVersion()
			if gens[a.GetService()] == a.GetGeneration() || v != "v1" {
				continue
			}
			gens[a.GetService()] = a.GetGeneration()
			f.report(t, id, &v1.ServiceReport{Service: a.GetService(), Generation: a.GetGeneration(), Phase: v1.Phase_PHASE_HEALTHY,
				CurrentVersion: v, TargetVersion: v, LastGoodVersion: v})
		}
	}
}

func (f *stageFleet) report(t *testing.T, id string, r *v1.ServiceReport) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last[id] = r
	if err := f.streams[id].Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
		t.Error(err)
	}
}

// staging lists the hosts whose latest assignment stages version.
func (f *stageFleet) staging(version string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, v := range f.stage {
		if v == version {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// TestHubStagesAhead: the hub sends Assignment.stage to StageOrigin hosts
// waiting for their wave (no holder yet), and a host that reports its
// staging failed (stage_failed_sha256) gives its admission slot to another
// waiting host: before, the slot stayed with it and staging stalled.
func TestHubStagesAhead(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	op := v1.NewOperatorServiceClient(cc)
	const n = 9
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}},
		Rollout: &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: n, Bake: durationpb.New(0), StageAhead: true}}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	f := &stageFleet{stage: map[string]string{}, streams: map[string]v1.AgentService_ConnectClient{}, last: map[string]*v1.ServiceReport{}}
	for i := range n {
		go f.run(ctx, t, cc, fmt.Sprintf("h%d", i))
	}
	create := func(version string, art *v1.Artifact) {
		t.Helper()
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: version, Artifact: art}}); err != nil {
			t.Fatal(err)
		}
	}
	create("v1", upload(t, ctx, cc, []byte("one")))
	w, err := op.WatchRollout(ctx, &v1.WatchRolloutRequest{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	var last *v1.Rollout
	for {
		m, err := w.Recv()
		if err != nil {
			break
		}
		last = m.GetRollout()
	}
	if last.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || last.GetToVersion() != "v1" {
		t.Fatalf("rollout of v1: %v %s", last.GetState(), last.GetReason())
	}
	art2 := upload(t, ctx, cc, []byte("two"))
	create("v2", art2)
	var first []string
	testkit.Eventually(t, 60*time.Second, "StageOrigin hosts staging v2", func() bool {
		first = f.staging("v2")
		return len(first) == 2
	})
	failed := first[0]
	f.mu.Lock()
	r := f.last[failed]
	f.mu.Unlock()
	r = &v1.ServiceReport{Service: r.GetService(), Generation: r.GetGeneration(), Phase: r.GetPhase(), CurrentVersion: r.GetCurrentVersion(),
		TargetVersion: r.GetTargetVersion(), LastGoodVersion: r.GetLastGoodVersion(), StageFailedSha256: art2.GetSha256()}
	f.report(t, failed, r)
	testkit.Eventually(t, 60*time.Second, "the failed host's slot given to another waiting host", func() bool {
		now := f.staging("v2")
		if len(now) != 2 {
			return false
		}
		for _, id := range now {
			if id == failed {
				return false
			}
		}
		return true
	})
}

// TestPushPacer: reports' staging-only changes of the desired state cause
// at most one pass of the push loop per stageRepushInterval (with a
// trailing pass for the last of them); other changes pass at once. Before
// the pacing, each of n staged reports re-evaluated every connected host
// (n passes of O(hosts) each).
func TestPushPacer(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := pushPacer{interval: time.Second}
	if pass, _ := p.due(5, 0, t0); !pass {
		t.Fatal("the first change did not pass")
	}
	if pass, wait := p.due(5, 0, t0.Add(time.Millisecond)); pass || wait != 0 {
		t.Fatalf("no change: pass %v, wait %v", pass, wait)
	}
	// 1,000 staged reports within the interval: no pass, a wait until the
	// interval is over.
	passes := 0
	for i := range 1000 {
		now := t0.Add(time.Duration(i+1) * time.Millisecond / 2)
		pass, wait := p.due(uint64(6+i), uint64(1+i), now)
		if pass {
			passes++
		} else if want := time.Second - now.Sub(t0); wait != want {
			t.Fatalf("report %d: wait %v, want %v", i, wait, want)
		}
	}
	if passes != 0 {
		t.Fatalf("%d passes for 1,000 staged reports within the interval, want 0 (then 1 trailing)", passes)
	}
	// The trailing pass, once the interval is over.
	if pass, _ := p.due(1005, 1000, t0.Add(time.Second)); !pass {
		t.Fatal("no trailing pass after the interval")
	}
	// A staged report then another change: the other change passes at once.
	if pass, _ := p.due(1006, 1001, t0.Add(time.Second+time.Millisecond)); pass {
		t.Fatal("a staged report right after a pass passed")
	}
	if pass, _ := p.due(1007, 1001, t0.Add(time.Second+2*time.Millisecond)); !pass {
		t.Fatal("a change other than staging did not pass at once")
	}
}

// TestValidateReportStaging: a report's staging digests are sha256s (or
// empty); anything else is refused, naming the field and the value, before
// it reaches the store (each change recomputes the stage plan). Before, any
// string up to the message size was stored.
func TestValidateReportStaging(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	if err := validateReport(&v1.ServiceReport{Service: "web", StagedSha256: sha, StageFailedSha256: sha}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		r    *v1.ServiceReport
		want string
	}{
		{&v1.ServiceReport{Service: "web", StagedSha256: "nope"}, `report.staged_sha256: invalid sha256 "nope"`},
		{&v1.ServiceReport{Service: "web", StagedSha256: strings.Repeat("a", 1<<20)}, `report.staged_sha256: 1048576 bytes, over 64`},
		{&v1.ServiceReport{Service: "web", StageFailedSha256: strings.ToUpper(sha) + "x"}, `report.stage_failed_sha256`},
	} {
		err := validateReport(tc.r)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.40v: %v, want %q", tc.r, err, tc.want)
		}
	}
}
