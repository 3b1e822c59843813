package coordinator

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// stageFleet is a fleet of fake agents on real streams that install every
// release they are assigned at once, except the held version (hold: its
// installs wait for install), and record each host's latest
// Assignment.stage and the first source it names.
type stageFleet struct {
	mu      sync.Mutex
	hold    string
	stage   map[string]string // host → version its latest assignment stages ("": none)
	src     map[string]string // host → the first source of its latest stage ("": none)
	onHello map[string]string // host → the version the first assignments of its latest stream staged
	hellos  map[string]int    // host → streams that received their first assignments
	asg     map[string]*v1.Assignment
	streams map[string]v1.AgentService_ConnectClient
	cancel  map[string]context.CancelFunc
	last    map[string]*v1.ServiceReport
}

func newStageFleet(hold string) *stageFleet {
	return &stageFleet{hold: hold, stage: map[string]string{}, src: map[string]string{}, onHello: map[string]string{}, hellos: map[string]int{},
		asg: map[string]*v1.Assignment{}, streams: map[string]v1.AgentService_ConnectClient{}, cancel: map[string]context.CancelFunc{},
		last: map[string]*v1.ServiceReport{}}
}

// run connects host id (again: a newer stream replaces the older) and
// follows its assignments until the stream or ctx ends.
func (f *stageFleet) run(ctx context.Context, t *testing.T, cc *grpc.ClientConn, id string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := v1.NewAgentServiceClient(cc).Connect(ctx)
	if err != nil {
		t.Error(err)
		return
	}
	hello := &v1.Hello{HostId: id, Labels: map[string]string{"role": "web"}, PeerAddress: id + ":7000"}
	f.mu.Lock()
	if r := f.last[id]; r != nil {
		hello.Services = []*v1.ServiceReport{r}
	}
	f.mu.Unlock()
	if err := s.Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		t.Error(err)
		return
	}
	f.mu.Lock()
	f.streams[id], f.cancel[id] = s, cancel
	f.mu.Unlock()
	gens := map[string]int64{}
	for first := true; ; first = false {
		m, err := s.Recv()
		if err != nil {
			return
		}
		f.mu.Lock()
		if first {
			f.onHello[id] = ""
			for _, a := range m.GetAssignments() {
				f.onHello[id] = a.GetStage().GetVersion()
			}
			f.hellos[id]++
		}
		f.mu.Unlock()
		for _, a := range m.GetAssignments() {
			f.mu.Lock()
			f.stage[id], f.src[id], f.asg[id] = a.GetStage().GetVersion(), "", a
			if a.GetStage() != nil && len(a.GetSources()) > 0 {
				f.src[id] = a.GetSources()[0].GetHostId()
			}
			f.mu.Unlock()
			v := a.GetRelease().GetVersion()
			if gens[a.GetService()] == a.GetGeneration() || v == f.hold {
				continue
			}
			gens[a.GetService()] = a.GetGeneration()
			f.report(t, id, &v1.ServiceReport{Service: a.GetService(), Generation: a.GetGeneration(), Phase: v1.Phase_PHASE_HEALTHY,
				CurrentVersion: v, TargetVersion: v, LastGoodVersion: v})
		}
	}
}

// install reports host id healthy on the release its latest assignment
// names (a held install).
func (f *stageFleet) install(t *testing.T, id string) {
	f.mu.Lock()
	a := f.asg[id]
	f.mu.Unlock()
	v := a.GetRelease().GetVersion()
	f.report(t, id, &v1.ServiceReport{Service: a.GetService(), Generation: a.GetGeneration(), Phase: v1.Phase_PHASE_HEALTHY,
		CurrentVersion: v, TargetVersion: v, LastGoodVersion: v})
}

// disconnect ends host id's stream (the host stays down).
func (f *stageFleet) disconnect(id string) {
	f.mu.Lock()
	cancel := f.cancel[id]
	f.stage[id], f.src[id] = "", ""
	f.mu.Unlock()
	cancel()
}

func (f *stageFleet) report(t *testing.T, id string, r *v1.ServiceReport) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last[id] = r
	if err := f.streams[id].Send(&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: r}}); err != nil {
		t.Error(err)
	}
}

// staging lists the hosts whose latest assignment stages version, each
// with its first source ("host←source"; "host←" none).
func (f *stageFleet) staging(version string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, v := range f.stage {
		if v == version {
			out = append(out, id+"←"+f.src[id])
		}
	}
	sort.Strings(out)
	return out
}

// stageRollout starts the stage-ahead fleet of TestHubStagesAhead and
// TestHubReplansWhenStagerDisconnects: n hosts on v1, then v2 created
// (the fleet holds its installs), the canary wave then a bake of an hour
// before the other wave. It returns the fleet, v2's artifact and the v2
// rollout once its canary is UPDATING.
func stageRollout(t *testing.T, ctx context.Context, cc *grpc.ClientConn, n int) (*stageFleet, *v1.Artifact, *v1.Rollout) {
	t.Helper()
	op := v1.NewOperatorServiceClient(cc)
	pol := &v1.RolloutPolicy{Canary: 1, Waves: []uint32{100}, MaxParallel: uint32(n), Bake: durationpb.New(0), StageAhead: true}
	spec := &v1.ServiceSpec{Name: "web", Selector: map[string]string{"role": "web"}, Run: &v1.RunSpec{Command: []string{"./app"}}, Rollout: pol}
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	f := newStageFleet("v2")
	for i := range n {
		go f.run(ctx, t, cc, fmt.Sprintf("h%02d", i))
	}
	create := func(version string, art *v1.Artifact) {
		t.Helper()
		if _, err := op.CreateRelease(ctx, &v1.CreateReleaseRequest{Release: &v1.Release{Service: "web", Version: version, Artifact: art}}); err != nil {
			t.Fatal(err)
		}
	}
	watch := func(until func(*v1.Rollout) bool) *v1.Rollout {
		t.Helper()
		w, err := op.WatchRollout(ctx, &v1.WatchRolloutRequest{Service: "web"})
		if err != nil {
			t.Fatal(err)
		}
		var last *v1.Rollout
		for {
			m, err := w.Recv()
			if err != nil {
				t.Fatalf("watch: %v (last %v)", err, last)
			}
			if last = m.GetRollout(); until(last) {
				return last
			}
		}
	}
	create("v1", upload(t, ctx, cc, []byte("one")))
	if r := watch(rollout.Terminal); r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || r.GetToVersion() != "v1" {
		t.Fatalf("rollout of v1: %v %s", r.GetState(), r.GetReason())
	}
	// The other wave waits an hour after the canary's: its hosts wait
	// for their wave while the test looks at their staging.
	pol.Bake = durationpb.New(time.Hour)
	if _, err := op.ApplyService(ctx, &v1.ApplyServiceRequest{Spec: spec}); err != nil {
		t.Fatal(err)
	}
	art2 := upload(t, ctx, cc, []byte("two"))
	create("v2", art2)
	r := watch(func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v2" && len(r.GetWaves()) == 2 &&
			r.GetWaves()[0].GetHosts()[0].GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING
	})
	if len(r.GetWaves()[1].GetHosts()) != n-1 {
		t.Fatalf("v2 rollout waves %v, want the canary then %d hosts", r.GetWaves(), n-1)
	}
	return f, art2, r
}

// TestHubStagesAhead: staging waits for the canary, then follows the
// tree. While the canary is in its wave no host gets Assignment.stage
// (each host of the other wave reconnects and its first assignments stage
// nothing; before, the canary's children were roots and StageOrigin of
// them staged from the coordinator); once the canary is DONE its
// StageFanout children stage with the canary as their first source (the
// coordinator serves no root). A host that reports its staging failed
// (stage_failed_sha256) serves nobody: its children stage from the
// canary instead of waiting for it.
func TestHubStagesAhead(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 9
	f, art2, r := stageRollout(t, ctx, cc, n)
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	var plan []string // wave 1 in plan order: the tree's nodes 1..n-1
	for _, hp := range r.GetWaves()[1].GetHosts() {
		plan = append(plan, hp.GetHostId())
	}
	for _, id := range plan {
		f.mu.Lock()
		before := f.hellos[id]
		f.mu.Unlock()
		go f.run(ctx, t, cc, id)
		testkit.Eventually(t, 60*time.Second, id+" reconnected", func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.hellos[id] > before
		})
		f.mu.Lock()
		got := f.onHello[id]
		f.mu.Unlock()
		if got != "" {
			t.Fatalf("%s stages %s while the canary %s is in its wave", id, got, canary)
		}
	}
	f.install(t, canary)
	want := func(ids []string, src string) []string {
		var out []string
		for _, id := range ids {
			out = append(out, id+"←"+src)
		}
		sort.Strings(out)
		return out
	}
	children := want(plan[:4], canary)
	var got []string
	testkit.Eventually(t, 60*time.Second, "the canary's children staging v2 from it", func() bool {
		got = f.staging("v2")
		return slices.Equal(got, children)
	})
	// plan[0] fails its staging: its children (plan[4:8]) look past it to
	// the canary.
	failed := plan[0]
	f.mu.Lock()
	rep := f.last[failed]
	f.mu.Unlock()
	rep = &v1.ServiceReport{Service: rep.GetService(), Generation: rep.GetGeneration(), Phase: rep.GetPhase(), CurrentVersion: rep.GetCurrentVersion(),
		TargetVersion: rep.GetTargetVersion(), LastGoodVersion: rep.GetLastGoodVersion(), StageFailedSha256: art2.GetSha256()}
	f.report(t, failed, rep)
	after := want(append(slices.Clone(plan[1:4]), plan[4:8]...), canary)
	testkit.Eventually(t, 60*time.Second, "the failed host's children staging from the canary", func() bool {
		got = f.staging("v2")
		return slices.Equal(got, after)
	})
}

// TestHubReplansWhenStagerDisconnects: a host admitted to stage that
// disconnects (while waiting for its wave: the rollout records nothing)
// makes the hub replan (paced like other staging changes): its children
// in the tree look past it to the canary. Before, the plan kept counting
// it until the next change of the desired state, and its children waited
// for a host that was gone.
func TestHubReplansWhenStagerDisconnects(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 9
	f, _, r := stageRollout(t, ctx, cc, n)
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	var plan []string
	for _, hp := range r.GetWaves()[1].GetHosts() {
		plan = append(plan, hp.GetHostId())
	}
	f.install(t, canary)
	testkit.Eventually(t, 60*time.Second, "the canary's children staging v2", func() bool {
		return len(f.staging("v2")) == 4
	})
	gone := plan[0]
	f.disconnect(gone)
	var want []string
	for _, id := range append(slices.Clone(plan[1:4]), plan[4:8]...) {
		want = append(want, id+"←"+canary)
	}
	sort.Strings(want)
	var got []string
	testkit.Eventually(t, 60*time.Second, "the disconnected host's children staging from the canary", func() bool {
		got = f.staging("v2")
		return slices.Equal(got, want)
	})
}

// TestHubReplansWhenStagerReconnects: a host that was disconnected when
// the plan was made (left out: it took no admission slot) and reconnects
// makes the hub replan (paced like disconnects, StagePlan.Found): it gets
// its stage, from the canary, its parent in the tree. Before, nothing
// replanned on a reconnect, and the host staged nothing until some other
// host's report changed the plan.
func TestHubReplansWhenStagerReconnects(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 9
	f, _, r := stageRollout(t, ctx, cc, n)
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	var plan []string
	for _, hp := range r.GetWaves()[1].GetHosts() {
		plan = append(plan, hp.GetHostId())
	}
	back := plan[1]
	f.disconnect(back)
	f.install(t, canary)
	want := func(ids ...string) []string {
		var out []string
		for _, id := range ids {
			out = append(out, id+"←"+canary)
		}
		sort.Strings(out)
		return out
	}
	var got []string
	without := want(plan[0], plan[2], plan[3])
	testkit.Eventually(t, 60*time.Second, "the canary's connected children staging v2", func() bool {
		got = f.staging("v2")
		return slices.Equal(got, without)
	})
	start := time.Now()
	go f.run(ctx, t, cc, back)
	with := want(plan[0], plan[1], plan[2], plan[3])
	testkit.Eventually(t, 60*time.Second, back+" staging v2 once back", func() bool {
		got = f.staging("v2")
		return slices.Equal(got, with)
	})
	t.Logf("%s staging %v after its reconnect", back, time.Since(start))
}

// TestHubDoneHostWithFailedStagingServes: a host whose staging of the
// target failed and that installed it since (DONE, its reports still
// carrying stage_failed_sha256: the agent clears it only when a staging
// starts again) holds the target: it is a holder and the first source of
// its children. Before, it stayed out of the plan for good (no holder),
// and its children staged from the hosts above it, or the coordinator.
func TestHubDoneHostWithFailedStagingServes(t *testing.T) {
	cc := startCoordinator(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 9
	f, art2, r := stageRollout(t, ctx, cc, n)
	canary := r.GetWaves()[0].GetHosts()[0].GetHostId()
	var plan []string
	for _, hp := range r.GetWaves()[1].GetHosts() {
		plan = append(plan, hp.GetHostId())
	}
	f.mu.Lock()
	a := f.asg[canary]
	f.mu.Unlock()
	v := a.GetRelease().GetVersion()
	f.report(t, canary, &v1.ServiceReport{Service: a.GetService(), Generation: a.GetGeneration(), Phase: v1.Phase_PHASE_HEALTHY,
		CurrentVersion: v, TargetVersion: v, LastGoodVersion: v, StageFailedSha256: art2.GetSha256()})
	var want []string
	for _, id := range plan[:4] {
		want = append(want, id+"←"+canary)
	}
	sort.Strings(want)
	var got []string
	testkit.Eventually(t, 60*time.Second, "the canary's children staging v2 from it", func() bool {
		got = f.staging("v2")
		return slices.Equal(got, want)
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

// TestLostPacer: a disconnect storm (10,000 hosts over two seconds)
// checks the stage plans (and replans) at most once per interval, not
// once per host, and the last disconnect gets a trailing check.
func TestLostPacer(t *testing.T) {
	connStorm(t, 1)
}

// TestReconnectPacer: a reconnect storm (10,000 hosts over two seconds,
// each a deleted connection record and a new one, both counted: the push
// loop paces Disconnects+Connects) checks the stage plans at most once per
// interval too: 10,000 reconnects are not 10,000 replans.
func TestReconnectPacer(t *testing.T) {
	connStorm(t, 2)
}

// connStorm runs 10,000 hosts' connection changes (perHost each) over two
// seconds through the push loop's pacer of connection changes.
func connStorm(t *testing.T, perHost uint64) {
	t.Helper()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := pushPacer{interval: time.Second} // as the push loop paces connection changes
	if check, wait := p.due(0, 0, t0); check || wait != 0 {
		t.Fatalf("no change: check %v, wait %v", check, wait)
	}
	const n = 10000
	checks := 0
	var now time.Time
	var wait time.Duration
	for i := range uint64(n) {
		now = t0.Add(time.Duration(i) * 2 * time.Second / n)
		for j := range perHost {
			churn := i*perHost + j + 1
			var check bool
			check, wait = p.due(churn, churn, now)
			switch {
			case check:
				checks++
			case wait <= 0 || wait > time.Second:
				t.Fatalf("host %d, change %d: no check and wait %v (want in (0, 1s])", i, j, wait)
			}
		}
	}
	if checks != 2 {
		t.Fatalf("%d checks for %d hosts' changes over 2 s, want 2 (at 0 s and 1 s, then 1 trailing)", checks, n)
	}
	last := uint64(n) * perHost
	if check, _ := p.due(last, last, now.Add(wait)); !check {
		t.Fatal("no trailing check after the last change")
	}
	if check, wait := p.due(last, last, now.Add(wait+time.Millisecond)); check || wait != 0 {
		t.Fatalf("no new change: check %v, wait %v", check, wait)
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

// TestConnectStormPacesPushPasses: hosts connecting write their records,
// which change only which hosts are offered as sources (paced changes):
// 60 hosts connecting cause about one push pass a second, not one per
// record (each a pass over every connected host: at 10,000 hosts about
// 700 passes, 6.3 s of the 15.3 s the fleet took to connect).
func TestConnectStormPacesPushPasses(t *testing.T) {
	cc, metrics := startCoordinatorWithMetrics(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, mfs := scrape(t, metrics)
	before, _, _ := sample(mfs, "fleetwave_coordinator_push_passes_total")
	const n = 60 // under the streams one (insecure: the same) caller may hold
	var connected sync.WaitGroup
	connected.Add(n)
	began := time.Now()
	for i := range n {
		go func() { _ = fakeAgent(ctx, cc, fmt.Sprintf("h%03d", i), &connected) }()
	}
	connected.Wait()
	// Every host's record is in the coordinator's mirror, and the
	// trailing pass for the last of them has run.
	var passes float64
	testkit.Eventually(t, 30*time.Second, "the host records mirrored and the passes settled", func() bool {
		resp, err := v1.NewOperatorServiceClient(cc).ListHosts(ctx, &v1.ListHostsRequest{})
		if err != nil || len(resp.GetHosts()) != n {
			return false
		}
		_, mfs := scrape(t, metrics)
		v, _, _ := sample(mfs, "fleetwave_coordinator_push_passes_total")
		settled := v == passes
		passes = v
		return settled && time.Since(began) > 2*stageRepushInterval
	})
	took := time.Since(began)
	t.Logf("%d hosts connected in %s: %.0f push passes", n, took.Round(time.Millisecond), passes-before)
	// One pass per stageRepushInterval while they connected, the trailing
	// one, and one for the first change.
	if most := took.Seconds()/stageRepushInterval.Seconds() + 2; passes-before > most {
		t.Fatalf("%d hosts connecting in %s caused %.0f push passes, want at most %.0f", n, took.Round(time.Millisecond), passes-before, most)
	}
}
