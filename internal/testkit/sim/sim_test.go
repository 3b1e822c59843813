package sim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/internal/testkit"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// startFleet starts a simulated fleet against addr, closed at the end of t.
func startFleet(t *testing.T, ctx context.Context, cfg Config) *Fleet {
	t.Helper()
	f, err := Start(ctx, cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	if err := f.WaitConnected(ctx, cfg.Hosts); err != nil {
		t.Fatal(err)
	}
	return f
}

// setup starts a coordinator, an operator connection and a fleet; every
// host on release v1 of service "web" when base is set.
func setup(t *testing.T, ctx context.Context, cfg Config, spec *v1.ServiceSpec) (*Fleet, *operator) {
	t.Helper()
	cfg.Coordinator = startCoordinator(t)
	o, err := dialOperator(ctx, cfg.Coordinator)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.cc.Close() })
	if err := o.apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	return startFleet(t, ctx, cfg), o
}

// deploy releases version and waits until every host reports it and the
// rollout succeeded.
func deploy(t *testing.T, ctx context.Context, f *Fleet, o *operator, version string) {
	t.Helper()
	if _, err := o.release(ctx, "web", version); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAll(ctx, "web", version); err != nil {
		t.Fatal(err)
	}
	r, err := o.waitRollout(ctx, "web", ended(version))
	if err != nil {
		t.Fatal(err)
	}
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout to %s: %v %s", version, r.GetState(), r.GetReason())
	}
}

func TestFleetReachesRelease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 30
	cfg := Config{Hosts: n, Seed: 1, InstallDelay: 5 * time.Millisecond, InstallJitter: 10 * time.Millisecond,
		CheckDelay: 5 * time.Millisecond, CheckJitter: 5 * time.Millisecond, ReconnectBase: 50 * time.Millisecond,
		Labels: map[string]string{"role": "web"}}
	f, o := setup(t, ctx, cfg, simSpec("web", 1, []uint32{50, 100}, 10))

	deploy(t, ctx, f, o, "v1")
	deploy(t, ctx, f, o, "v2")
	// The coordinator's view agrees with the fleet's.
	hosts, err := o.op.ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts.GetHosts()) != n {
		t.Fatalf("coordinator knows %d hosts, want %d", len(hosts.GetHosts()), n)
	}
	for _, h := range hosts.GetHosts() {
		if !strings.HasPrefix(h.GetId(), "sim-000") || h.GetLabels()["role"] != "web" || h.GetLabels()["zone"] == "" {
			t.Errorf("host %s labels %v", h.GetId(), h.GetLabels())
		}
		if len(h.GetServices()) != 1 || h.GetServices()[0].GetCurrentVersion() != "v2" || h.GetServices()[0].GetPhase() != v1.Phase_PHASE_HEALTHY ||
			h.GetServices()[0].GetLastGoodVersion() != "v2" {
			t.Errorf("host %s reports %v", h.GetId(), h.GetServices())
		}
	}
	st := f.Stats()
	if st.Connected != n || st.Hellos < n || st.Installs != 2*n || st.Failures != 0 || st.Reverts != 0 {
		t.Errorf("stats %+v", st)
	}
	// FETCHING, CHECKING and HEALTHY per install, apart in time (except
	// where a late turn of a host's loop found two due at once: coalesced,
	// TestInstantPhasesCoalesce).
	if st.Reports <= 2*st.Installs || st.Reports > 3*st.Installs+n {
		t.Errorf("%d reports sent for %d installs, want about 3 each", st.Reports, st.Installs)
	}
	if st.Latency.Count > 0 && (st.Latency.P50 <= 0 || st.Latency.P99 < st.Latency.P50 || st.Latency.Max < st.Latency.P99) {
		t.Errorf("latency %+v", st.Latency)
	}
	// A set's bytes reach its host's socket after sent_at and before its
	// goroutine has it. Sets whose read had no receive time are not
	// counted (arrivalConn.note), so only the maximum compares.
	sl := st.SocketLatency
	if sl.Count == 0 || sl.Count > st.Latency.Count || sl.P50 <= 0 || sl.Max > st.Latency.Max {
		t.Errorf("latency to the sockets %+v, to the goroutines %+v", sl, st.Latency)
	}
}

// Phases that follow each other within one turn of a host's loop (an
// install and checks that take no time) are sent as one report, the
// latest, as the agent's reporter coalesces them; phases apart in time are
// each sent (TestFleetReachesRelease).
func TestInstantPhasesCoalesce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 20
	cfg := Config{Hosts: n, Seed: 1, ReconnectBase: 50 * time.Millisecond, Labels: map[string]string{"role": "web"}}
	f, o := setup(t, ctx, cfg, simSpec("web", 1, []uint32{50, 100}, 10))

	deploy(t, ctx, f, o, "v1")
	deploy(t, ctx, f, o, "v2")
	st := f.Stats()
	if st.Installs != 2*n || st.Failures != 0 {
		t.Fatalf("stats %+v", st)
	}
	// One HEALTHY per install; a set sent again (a reconnect) may add one.
	if st.Reports < st.Installs || st.Reports >= 2*st.Installs {
		t.Errorf("%d reports sent for %d installs, want one each (FETCHING and CHECKING coalesced into HEALTHY)", st.Reports, st.Installs)
	}
}

func TestFailureRateFailsRolloutAndHostsGoBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 30
	cfg := Config{Hosts: n, Seed: 7, InstallDelay: 2 * time.Millisecond, CheckDelay: 2 * time.Millisecond,
		ReconnectBase: 50 * time.Millisecond}
	f, o := setup(t, ctx, cfg, simSpec("web", 1, []uint32{20, 100}, n))
	deploy(t, ctx, f, o, "v1")
	if err := f.SetFailRate(0.3); err != nil {
		t.Fatal(err)
	}
	if _, err := o.release(ctx, "web", "v2"); err != nil {
		t.Fatal(err)
	}
	r, err := o.waitRollout(ctx, "web", ended("v2"))
	if err != nil {
		t.Fatal(err)
	}
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(r.GetReason(), "simulated install failure") {
		t.Fatalf("rollout to v2: %v %q, want FAILED by a simulated install failure", r.GetState(), r.GetReason())
	}
	// Every host goes back to (or stays on) the last good release.
	if err := f.WaitAll(ctx, "web", "v1"); err != nil {
		t.Fatal(err)
	}
	// Hosts that never moved get the concluded rollout's generation after
	// the failure is written, which may be after the hosts that moved are
	// back: wait for every host's report of it.
	testkit.EventuallyErr(t, 20*time.Second, "every host on v1 above the failed rollout's generation", func() error {
		for i := range n {
			rep, err := f.Report(i, "web")
			if err != nil {
				return err
			}
			if rep.GetLastGoodVersion() != "v1" || rep.GetGeneration() <= r.GetGeneration() {
				return fmt.Errorf("host %d after the failed rollout: %v", i, rep)
			}
		}
		return nil
	})
	if st := f.Stats(); st.Failures == 0 || st.LastFailure.IsZero() {
		t.Errorf("stats %+v: want failures", st)
	}
	svc, err := o.op.GetService(ctx, &v1.GetServiceRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if !svc.GetService().GetStatus().GetFrozen() || svc.GetService().GetStatus().GetStableVersion() != "v1" {
		t.Errorf("service after the failed rollout: %v", svc.GetService().GetStatus())
	}
}

// TestFaultInjectionDisconnectMidRollout takes hosts' streams down while
// they install, lets the coordinator see them unknown, and brings them
// back: the rollout completes.
func TestFaultInjectionDisconnectMidRollout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 24
	cfg := Config{Hosts: n, Seed: 3, InstallDelay: time.Second, CheckDelay: 10 * time.Millisecond,
		ReconnectBase: 50 * time.Millisecond}
	f, o := setup(t, ctx, cfg, simSpec("web", 1, []uint32{50, 100}, n))
	deploy(t, ctx, f, o, "v1")
	if _, err := o.release(ctx, "web", "v2"); err != nil {
		t.Fatal(err)
	}
	// Wait for wave 1 (not the canary) to be installing, and take three of
	// its hosts down. The rollout record says the wave started as soon as
	// the coordinator's mirror has it (GetRollout syncs the mirror); the
	// hosts' assignments follow from the hub's push, which runs after that
	// same mirror change, so a host may get its assignment a moment after
	// the wave is seen: wait for hosts to be installing, not only assigned.
	r, err := o.waitRollout(ctx, "web", func(r *v1.Rollout) bool {
		return r.GetToVersion() == "v2" && len(r.GetWaves()) == 3 && r.GetWaves()[1].GetState() == v1.WaveState_WAVE_STATE_PROGRESSING
	})
	if err != nil {
		t.Fatal(err)
	}
	var down []int
	isDown := map[int]bool{}
	testkit.EventuallyErr(t, 10*time.Second, "three hosts of wave 1 installing", func() error {
		for _, h := range r.GetWaves()[1].GetHosts() {
			var i int
			if _, err := fmt.Sscanf(h.GetHostId(), "sim-%05d", &i); err != nil {
				t.Fatal(err)
			}
			// Only hosts still installing: the rollout must wait for them.
			if rep, err := f.Report(i, "web"); isDown[i] || err != nil || rep.GetPhase() != v1.Phase_PHASE_FETCHING || rep.GetTargetVersion() != "v2" {
				continue
			}
			if err := f.Disconnect(i); err != nil {
				t.Fatal(err)
			}
			isDown[i] = true
			if down = append(down, i); len(down) == 3 {
				return nil
			}
		}
		return fmt.Errorf("%d of wave 1's hosts installing v2 taken down", len(down))
	})
	unknown := func(r *v1.Rollout) (k int) {
		for _, w := range r.GetWaves() {
			for _, h := range w.GetHosts() {
				if h.GetUnknown() {
					k++
				}
			}
		}
		return k
	}
	if _, err := o.waitRollout(ctx, "web", func(r *v1.Rollout) bool { return unknown(r) == len(down) }); err != nil {
		t.Fatal(err)
	}
	// The disconnected hosts finish their install offline; the rollout
	// cannot complete without their reports.
	for _, i := range down {
		testkit.EventuallyErr(t, 30*time.Second, fmt.Sprintf("host %d finishing its install offline", i), func() error {
			rep, err := f.Report(i, "web")
			if err != nil {
				t.Fatal(err)
			}
			if rep.GetPhase() != v1.Phase_PHASE_HEALTHY || rep.GetCurrentVersion() != "v2" {
				return fmt.Errorf("report %v", rep)
			}
			return nil
		})
	}
	if r, err := o.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: "web"}); err != nil || r.GetRollout().GetState() != v1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		t.Fatalf("rollout with hosts down: %v %v", r.GetRollout().GetState(), err)
	}
	if f.Stats().Connected != n-len(down) {
		t.Fatalf("connected %d, want %d", f.Stats().Connected, n-len(down))
	}
	for _, i := range down {
		if err := f.Reconnect(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.WaitAll(ctx, "web", "v2"); err != nil {
		t.Fatal(err)
	}
	r, err = o.waitRollout(ctx, "web", ended("v2"))
	if err != nil {
		t.Fatal(err)
	}
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED || unknown(r) != 0 {
		t.Fatalf("rollout after the hosts came back: %v %s, %d unknown", r.GetState(), r.GetReason(), unknown(r))
	}
	if st := f.Stats(); st.Disconnects < uint64(len(down)) || st.Hellos < uint64(n+len(down)) {
		t.Errorf("stats %+v", st)
	}
}

// TestFailNextFailsTheCanary: a host told to fail its next install fails
// the canary wave, and the release never reaches the other hosts.
func TestFailNextFailsTheCanary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 6
	cfg := Config{Hosts: n, Seed: 1, ReconnectBase: 50 * time.Millisecond}
	f, o := setup(t, ctx, cfg, simSpec("web", 1, []uint32{100}, n))
	deploy(t, ctx, f, o, "v1")
	// The canary is the first host of the first zone: sim-00000.
	if err := f.FailNext(0); err != nil {
		t.Fatal(err)
	}
	if _, err := o.release(ctx, "web", "v2"); err != nil {
		t.Fatal(err)
	}
	r, err := o.waitRollout(ctx, "web", ended("v2"))
	if err != nil {
		t.Fatal(err)
	}
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(r.GetReason(), "sim-00000") {
		t.Fatalf("rollout: %v %q, want FAILED on sim-00000", r.GetState(), r.GetReason())
	}
	if err := f.WaitAll(ctx, "web", "v1"); err != nil {
		t.Fatal(err)
	}
	if st := f.Stats(); st.Installs != n+1 || st.Failures != 1 {
		t.Errorf("stats %+v: want %d installs, 1 failure", st, n+1)
	}
	if err := f.FailNext(n); !errors.Is(err, ErrNoHost) {
		t.Errorf("FailNext(%d) = %v, want ErrNoHost", n, err)
	}
}

func TestConfigValidateNamesFields(t *testing.T) {
	c := Config{Coordinator: "nope", Hosts: -1, FailRate: 2, InstallDelay: -time.Second, SourceAddrs: 3,
		Labels: map[string]string{"bad key!": "x"}}
	err := c.Validate()
	for _, want := range []string{"coordinator:", "hosts:", "fail-rate:", "install-delay:", "source-addrs:", "labels"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, does not name %s", err, want)
		}
	}
	ok := Config{Coordinator: "127.0.0.1:7070", Hosts: 10, SourceAddrs: 4, FailRate: 0.5}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
	if _, err := ParseLabels("role=web,bad"); err == nil {
		t.Error("ParseLabels accepted an entry without =")
	}
	if l, err := ParseLabels("role=web, tier=1"); err != nil || l["role"] != "web" || l["tier"] != "1" {
		t.Errorf("ParseLabels = %v, %v", l, err)
	}
}
