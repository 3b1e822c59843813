package faults

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// takeoverDeadline is how long the tests wait for a new leader after the
// leader dies: a failure deadline, far above the lease TTL (2 s) plus a
// campaign. The time the takeover took is logged (MEASURE), not asserted:
// a loaded machine stretches it.
const takeoverDeadline = 30 * time.Second

// Scenario 1: kill -9 the leader in the middle of wave 1. Another
// coordinator takes over within seconds, resumes the wave from etcd (the
// hosts already updating are not assigned again) and the rollout completes.
func TestLeaderKilledMidWave(t *testing.T) {
	h := newHarness(t, options{bake: "3s"})
	old := h.coord("c1")
	id := h.release("v2")
	r := h.waitRollout(id, 60*time.Second, "wave 1 updating", func(r *v1.Rollout) bool { return waveUpdating(r, 1) })
	h.logf("kill -9 leader %s: %s", old.name, summary(r))
	killed := time.Now()
	old.proc.Kill9()
	old.down = true

	leader := h.waitLeader(old.name, takeoverDeadline)
	h.logf("MEASURE scenario 1: %s took over %s after the leader's kill -9", leader, time.Since(killed).Round(time.Millisecond))
	before, err := h.listEvents(id)
	if err != nil {
		t.Fatal(err)
	}
	h.waitFor(60*time.Second, "the new leader moves the rollout", func() (bool, string) {
		evs, err := h.listEvents(id)
		if err != nil {
			return false, err.Error()
		}
		return len(evs) > len(before), fmt.Sprintf("%d events, %d before", len(evs), len(before))
	})
	h.logf("MEASURE scenario 1: first decision of the new leader %s after the kill", time.Since(killed).Round(time.Millisecond))

	h.verifyEnd(id, 90*time.Second)
	cs, err := h.clusterStatus(h.opCoord())
	if err != nil {
		t.Fatal(err)
	}
	if cs.GetLeader() != leader {
		t.Errorf("leader changed again: %s, want %s", cs.GetLeader(), leader)
	}
	for _, c := range cs.GetCoordinators() {
		if c.GetName() == old.name {
			t.Errorf("cluster status still lists the killed coordinator %s", old.name)
		}
	}
	h.logf("MEASURE scenario 1: total %s", time.Since(h.began).Round(time.Millisecond))
}

// Scenario 2: SIGSTOP the leader for three lease TTLs. Another coordinator
// takes over; after SIGCONT the old leader finds its session lost, its
// fenced writes fail, it steps down and rejoins as a follower; the rollout
// completes.
func TestLeaderPausedPastLeaseStepsDown(t *testing.T) {
	h := newHarness(t, options{bake: "2s"})
	old := h.coord("c1")
	id := h.release("v2")
	r := h.waitRollout(id, 60*time.Second, "wave 1 updating", func(r *v1.Rollout) bool { return waveUpdating(r, 1) })
	h.logf("SIGSTOP leader %s: %s", old.name, summary(r))
	stopped := time.Now()
	if err := old.proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	old.paused = true

	leader := h.waitLeader(old.name, takeoverDeadline)
	h.logf("MEASURE scenario 2: %s took over %s after SIGSTOP of %s", leader, time.Since(stopped).Round(time.Millisecond), old.name)
	// Its registration lived on the lost lease: the others drop it.
	h.waitFor(10*time.Second, old.name+" leaves cluster status while stopped", func() (bool, string) {
		cs, err := h.clusterStatus(h.opCoord())
		if err != nil {
			return false, err.Error()
		}
		for _, c := range cs.GetCoordinators() {
			if c.GetName() == old.name {
				return false, "still listed"
			}
		}
		return true, ""
	})
	// Stay stopped for 3 lease TTLs in all: the fault's length.
	h.pause(time.Until(stopped.Add(6 * time.Second)))

	off := old.proc.LogSize()
	if err := old.proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	old.paused = false
	resumed := time.Now()
	h.logf("SIGCONT %s after %s", old.name, resumed.Sub(stopped).Round(time.Millisecond))

	var stepDown string
	h.waitFor(30*time.Second, old.name+" logs its session loss and steps down", func() (bool, string) {
		log := old.proc.LogSince(off, 1<<20)
		lost := strings.Contains(log, "etcd session lost")
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, `"stopped leading"`) {
				stepDown = line
			}
		}
		return lost && stepDown != "", fmt.Sprintf("session lost logged: %v, stopped leading logged: %v", lost, stepDown != "")
	})
	h.logf("MEASURE scenario 2: %s stepped down %s after SIGCONT: %s", old.name, time.Since(resumed).Round(time.Millisecond), stepDown)
	if !strings.Contains(stepDown, "not the leader") && !strings.Contains(stepDown, "session expired") {
		t.Errorf("stop line names neither a fenced (not the leader) write nor the expired session: %s", stepDown)
	}

	// It rejoins as a follower: registered again, not the leader, seen the
	// same way from itself and from the others (CLI, -o json).
	h.waitFor(30*time.Second, old.name+" rejoined as a follower", func() (bool, string) {
		var why []string
		for _, c := range h.live() {
			cs, err := h.clusterStatus(c)
			if err != nil {
				why = append(why, c.name+": "+err.Error())
				continue
			}
			listed := false
			for _, ci := range cs.GetCoordinators() {
				if ci.GetName() == old.name {
					listed = !ci.GetLeader()
				}
			}
			if !listed || cs.GetLeader() != leader || len(cs.GetCoordinators()) != nCoords {
				why = append(why, fmt.Sprintf("%s: leader %q, %d coordinators, %s listed as follower: %v", c.name, cs.GetLeader(), len(cs.GetCoordinators()), old.name, listed))
			}
		}
		return len(why) == 0, strings.Join(why, "; ")
	})
	var cs v1.ClusterStatusResponse
	h.cliJSON(old, &cs, "cluster", "status")
	if cs.GetLeader() != leader || cs.GetAnsweredBy() != old.name {
		t.Errorf("cluster status from %s: leader %q answered by %q, want %q by %s", old.name, cs.GetLeader(), cs.GetAnsweredBy(), leader, old.name)
	}
	h.logf("MEASURE scenario 2: %s a follower again %s after SIGCONT", old.name, time.Since(resumed).Round(time.Millisecond))

	h.verifyEnd(id, 90*time.Second)
	// It campaigns again, but while another leads it must never win.
	if strings.Contains(old.proc.LogSince(off, 1<<20), `"became rollout leader"`) {
		t.Errorf("%s became leader again after SIGCONT while %s leads", old.name, leader)
	}
	h.logf("MEASURE scenario 2: total %s", time.Since(h.began).Round(time.Millisecond))
}

// outage is how long scenario 3 keeps etcd without a quorum.
const outage = 10 * time.Second

// Scenario 3: kill 2 of the 3 etcd members while wave 0 bakes. Nothing
// can be decided: the stored rollout does not change and no host moves,
// while every service keeps answering. With the members back the rollout
// continues and completes.
func TestEtcdQuorumLostMidRollout(t *testing.T) {
	h := newHarness(t, options{bake: "3s"})
	id := h.release("v2")
	r := h.waitRollout(id, 60*time.Second, "canary baking", func(r *v1.Rollout) bool {
		return len(r.GetWaves()) > 1 && r.GetWaves()[0].GetState() == v1.WaveState_WAVE_STATE_BAKING
	})
	before := h.versions()
	starts := map[string]int{}
	for _, x := range h.hosts {
		starts[x.id] = len(h.starts(x))
	}
	// The rollout in either layout: one key, or a head and its parts
	// (coordinator/store/rollouts.go).
	key := "/fleetwave/v1/rollouts/" + service + "/" + id
	head := "/fleetwave/v1/rolloutsplit/" + service + "/" + id
	survivor := h.etcd.Endpoint(2)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{survivor}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	readStored := func() (*v1.Rollout, int64, error) {
		ctx, cancel := context.WithTimeout(h.ctx, time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, key, clientv3.WithSerializable())
		if err != nil {
			return nil, 0, err
		}
		if len(resp.Kvs) == 0 {
			// The head and its parts ("<head>/<n>"; "0" follows "/").
			if resp, err = cli.Get(ctx, head, clientv3.WithRange(head+"0"), clientv3.WithSerializable()); err != nil {
				return nil, 0, err
			}
			if len(resp.Kvs) == 0 || string(resp.Kvs[0].Key) != head {
				return nil, 0, fmt.Errorf("%s: no rollout in either layout", key)
			}
		}
		var sr v1.Rollout
		if err := proto.Unmarshal(resp.Kvs[0].Value, &sr); err != nil {
			return nil, 0, fmt.Errorf("%s: %w", resp.Kvs[0].Key, err)
		}
		for _, kv := range resp.Kvs[1:] {
			var part v1.Rollout
			if err := proto.Unmarshal(kv.Value, &part); err != nil {
				return nil, 0, fmt.Errorf("%s: %w", kv.Key, err)
			}
			for _, w := range part.GetWaves() {
				if int(w.GetIndex()) >= len(sr.GetWaves()) {
					return nil, 0, fmt.Errorf("%s: wave %d of %d", kv.Key, w.GetIndex(), len(sr.GetWaves()))
				}
				sr.Waves[w.GetIndex()].Hosts = append(sr.Waves[w.GetIndex()].Hosts, w.GetHosts()...)
			}
		}
		return &sr, resp.Kvs[0].ModRevision, nil
	}

	h.logf("kill -9 etcd members %s and %s: %s; versions %v", h.etcd.Name(0), h.etcd.Name(1), summary(r), before)
	killed := time.Now()
	for _, i := range []int{0, 1} {
		if err := h.etcd.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	if h.etcd.HasQuorum(h.ctx) {
		t.Fatal("etcd still has a quorum with 2 of 3 members killed")
	}
	stored, storedRev, err := readStored()
	if err != nil {
		t.Fatalf("serializable read from the surviving member: %v", err)
	}
	// Watch for 10 s (five lease TTLs, past the canary's bake end, and long
	// enough for every coordinator to lose its session and for agents to
	// reconnect while etcd is still down): nothing may change anywhere.
	reads, failed := 0, 0
	for time.Since(killed) < outage {
		sr, rev, err := readStored()
		if err != nil {
			t.Fatalf("serializable read from the surviving member: %v", err)
		}
		if rev != storedRev || !proto.Equal(sr, stored) {
			t.Fatalf("the stored rollout changed without an etcd quorum: rev %d → %d\n%s\n%s", storedRev, rev, summary(stored), summary(sr))
		}
		// One coordinator per round, in turn: a read may wait for etcd.
		c := h.coords[reads%nCoords]
		got, err := h.rolloutFromT(c, id, time.Second)
		reads++
		if err != nil {
			failed++
		} else if summary(got) != summary(stored) {
			t.Fatalf("%s serves a rollout that moved without quorum:\n%s\nstored:\n%s", c.name, summary(got), summary(stored))
		}
		now := h.versions()
		for id, v := range now {
			if v != before[id] {
				t.Fatalf("host %s serves %q, was %q, while etcd has no quorum (every service must keep running, nothing may move)", id, v, before[id])
			}
		}
		for _, x := range h.hosts {
			if n := len(h.starts(x)); n != starts[x.id] {
				t.Fatalf("host %s started its service again without an etcd quorum (%d starts, was %d)", x.id, n, starts[x.id])
			}
		}
		h.pause(200 * time.Millisecond) // poll interval
	}
	h.logf("MEASURE scenario 3: for %s without quorum the rollout stayed at rev %d (%s); %d of %d coordinator reads failed, the others showed it unchanged; every service answered",
		time.Since(killed).Round(time.Millisecond), storedRev, summary(stored), failed, reads)

	restarted := time.Now()
	for _, i := range []int{0, 1} {
		if err := h.etcd.Restart(i); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(h.ctx, 60*time.Second)
	err = h.etcd.WaitHealthy(wctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	healthy := time.Now()
	h.logf("MEASURE scenario 3: etcd healthy %s after the restart", healthy.Sub(restarted).Round(time.Millisecond))
	r = h.waitRollout(id, 60*time.Second, "wave 1 started after quorum came back", func(r *v1.Rollout) bool {
		return r.GetWaves()[1].GetState() != v1.WaveState_WAVE_STATE_PENDING
	})
	h.logf("MEASURE scenario 3: rollout advanced %s after etcd was healthy: %s", time.Since(healthy).Round(time.Millisecond), summary(r))
	cs, err := h.clusterStatus(h.opCoord())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range cs.GetEtcdMembers() {
		if !m.GetHealthy() {
			t.Errorf("cluster status: etcd member %s not healthy after restart: %s", m.GetName(), m.GetError())
		}
	}
	h.waitSucceeded(id, 90*time.Second)
	// Every agent is connected again, as the coordinators record it, well
	// after the leases of the sessions lost in the outage have expired.
	var notConnected string
	err = testfleet.WaitFor(h.ctx, 10*time.Second, "every agent recorded connected after the outage", func() (bool, string) {
		hosts, err := h.listHosts(h.opCoord())
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, x := range hosts {
			if !x.GetConnected() {
				bad = append(bad, x.GetId())
			}
		}
		notConnected = strings.Join(bad, ", ")
		return len(bad) == 0 && len(hosts) == nHosts, "not connected: " + notConnected
	})
	if err != nil {
		// Evidence: the connection records and the coordinators'
		// registrations (each on its current session lease) in etcd.
		etcdKeys := func(prefix string) string {
			gctx, gcancel := context.WithTimeout(h.ctx, 3*time.Second)
			defer gcancel()
			resp, gerr := h.etcd.Client(t).Get(gctx, prefix, clientv3.WithPrefix())
			if gerr != nil {
				return gerr.Error()
			}
			var kv []string
			for _, x := range resp.Kvs {
				kv = append(kv, fmt.Sprintf("%s (lease %x)", x.Key, x.Lease))
			}
			return strings.Join(kv, ", ")
		}
		t.Fatalf("after etcd quorum came back, hosts %s are recorded disconnected while their agents' streams are up "+
			"(connection records on a lost session lease?) (%v); in etcd: connections [%s], coordinators [%s]",
			notConnected, err, etcdKeys("/fleetwave/v1/conns/"), etcdKeys("/fleetwave/v1/coordinators/"))
	}
	h.verifyEnd(id, 90*time.Second)
	h.waitFor(30*time.Second, "3 coordinators registered after quorum loss", func() (bool, string) {
		cs, err := h.clusterStatus(h.opCoord())
		if err != nil {
			return false, err.Error()
		}
		return len(cs.GetCoordinators()) == nCoords && cs.GetLeader() != "", fmt.Sprintf("%d coordinators, leader %q", len(cs.GetCoordinators()), cs.GetLeader())
	})
	h.logf("MEASURE scenario 3: total %s", time.Since(h.began).Round(time.Millisecond))
}

// Scenario 4: cut host-2 off from every coordinator while it checks v2
// (wave 1). The agent finishes the install by itself (healthy, or a local
// revert), starts nothing new, notices its coordinator is gone; the
// coordinators count it unavailable (unknown) and hold the wave. After the
// link is restored it reconnects, reports, and the rollout completes.
func TestAgentCutOffMidInstall(t *testing.T) {
	const victim = "host-2"
	h := newHarness(t, options{bake: "1s", minHealthy: "3s", isolate: victim})
	x := h.host(victim)
	id := h.release("v2")
	r := h.waitRollout(id, 60*time.Second, victim+" checking v2", func(r *v1.Rollout) bool {
		_, hp := hostProgress(r, victim)
		return hp.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_UPDATING && hp.GetPhase() == v1.Phase_PHASE_CHECKING
	})
	off := x.proc.LogSize()
	h.logf("cut %s (%s): %s", victim, h.linkKind, summary(r))
	cut := time.Now()
	if err := h.link.Cut(); err != nil {
		t.Fatal(err)
	}

	// Hold the cut until the coordinators count the host unknown, its agent
	// has finished the install by itself and has noticed that its
	// coordinator is gone (so it must reconnect and report afresh).
	var unknownAfter, finishedAfter, noticedAfter time.Duration
	var finished string
	h.waitFor(45*time.Second, victim+" unknown, finished locally, and aware of the cut", func() (bool, string) {
		r, err := h.rollout(id)
		if err != nil {
			return false, err.Error()
		}
		_, hp := hostProgress(r, victim)
		if hp.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE {
			t.Fatalf("%s is done while cut off: %s", victim, summary(r))
		}
		if w := r.GetWaves()[2]; w.GetState() != v1.WaveState_WAVE_STATE_PENDING {
			t.Fatalf("wave 2 started while %s (wave 1) is cut off: %s", victim, summary(r))
		}
		if hp.GetUnknown() && unknownAfter == 0 {
			unknownAfter = time.Since(cut)
		}
		for _, line := range strings.Split(x.proc.LogSince(off, 1<<20), "\n") {
			if finished == "" && strings.Contains(line, `"message":"phase"`) && (strings.Contains(line, "PHASE_HEALTHY") || strings.Contains(line, "PHASE_REVERTED")) {
				finished, finishedAfter = line, time.Since(cut)
			}
			if noticedAfter == 0 && strings.Contains(line, `"coordinator stream ended"`) {
				noticedAfter = time.Since(cut)
			}
		}
		return unknownAfter > 0 && finished != "" && noticedAfter > 0,
			fmt.Sprintf("unknown after %s, finished after %s, stream end noticed after %s; %s", unknownAfter, finishedAfter, noticedAfter, summary(r))
	})
	h.logf("MEASURE scenario 4: %s counted unknown %s after the cut; its agent finished locally after %s (%s) and noticed the lost stream after %s",
		victim, unknownAfter.Round(time.Millisecond), finishedAfter.Round(time.Millisecond), phaseOf(finished), noticedAfter.Round(time.Millisecond))
	if !strings.Contains(finished, "PHASE_HEALTHY") {
		t.Errorf("%s reverted while cut off (the release is good): %s", victim, finished)
	}
	hosts, err := h.listHosts(h.opCoord())
	if err != nil {
		t.Fatal(err)
	}
	for _, hr := range hosts {
		if hr.GetId() == victim && hr.GetConnected() && hr.GetGossip() != "dead" && hr.GetGossip() != "suspect" {
			t.Errorf("hosts shows %s connected=%v gossip=%q while cut off, want it unavailable", victim, hr.GetConnected(), hr.GetGossip())
		}
	}
	// The rest of the fleet holds: wave 2's hosts still run v1.
	vs := h.versions(victim)
	for _, hp := range r.GetWaves()[2].GetHosts() {
		if vs[hp.GetHostId()] != "v1" {
			t.Errorf("wave 2 host %s serves %q while wave 1 is held, want v1", hp.GetHostId(), vs[hp.GetHostId()])
		}
	}

	restored := time.Now()
	if err := h.link.Restore(); err != nil {
		t.Fatal(err)
	}
	h.logf("restore %s after %s cut", victim, restored.Sub(cut).Round(time.Millisecond))
	h.waitRollout(id, 60*time.Second, victim+" reports done after the link is back", func(r *v1.Rollout) bool {
		_, hp := hostProgress(r, victim)
		return hp.GetState() == v1.HostRolloutState_HOST_ROLLOUT_STATE_DONE
	})
	h.logf("MEASURE scenario 4: %s reconnected, reported and was done %s after the restore", victim, time.Since(restored).Round(time.Millisecond))

	// Nothing new while cut: the agent's only phase change after the cut is
	// the end of the install it was in.
	var phases []string
	for _, line := range strings.Split(x.proc.LogSince(off, 1<<20), "\n") {
		if strings.Contains(line, `"message":"phase"`) {
			phases = append(phases, line)
		}
	}
	if len(phases) != 1 {
		t.Errorf("%s changed phase %d times after the cut, want once (checking → healthy):\n%s", victim, len(phases), strings.Join(phases, "\n"))
	}
	final := h.waitSucceeded(id, 90*time.Second)
	// Gossip converges too: the host is alive again for every coordinator.
	h.waitFor(40*time.Second, victim+" connected and alive in gossip for every coordinator", func() (bool, string) {
		var why []string
		for _, c := range h.live() {
			hosts, err := h.listHosts(c)
			if err != nil {
				why = append(why, c.name+": "+err.Error())
				continue
			}
			for _, hr := range hosts {
				if hr.GetId() == victim && (!hr.GetConnected() || hr.GetGossip() != "alive") {
					why = append(why, fmt.Sprintf("%s: connected=%v gossip=%q", c.name, hr.GetConnected(), hr.GetGossip()))
				}
			}
		}
		return len(why) == 0, strings.Join(why, "; ")
	})
	h.logf("MEASURE scenario 4: %s connected and alive in gossip for every coordinator %s after the restore (checked once the rollout ended)", victim, time.Since(restored).Round(time.Millisecond))
	if _, hp := hostProgress(final, victim); hp.GetUnknown() {
		// A stale gossip "dead" (memberlist tells a healed node late) must
		// not outrank the host's live stream.
		t.Errorf("%s done but still flagged unknown in the final record", victim)
	}
	h.verifyEnd(id, 30*time.Second)
	evs := h.events(final.GetId())
	if eventCount(evs, rollout.EventHostUnknown, victim) < 1 {
		t.Errorf("history lacks host_unknown for %s", victim)
	}
	if !h.unknownOK[victim] && eventCount(evs, rollout.EventHostBack, victim) < 1 {
		t.Errorf("history lacks host_back for %s", victim)
	}
	h.logf("MEASURE scenario 4: total %s", time.Since(h.began).Round(time.Millisecond))
}

// phaseOf extracts the phase from an agent's "phase" log line.
func phaseOf(line string) string {
	_, rest, ok := strings.Cut(line, `"phase":"`)
	if !ok {
		return "?"
	}
	p, _, _ := strings.Cut(rest, `"`)
	return p
}

// Scenario 5: kill -9 a coordinator that is not the leader and holds agent
// streams, mid-wave. Its agents reconnect to another coordinator and the
// rollout continues.
func TestAgentsCoordinatorDies(t *testing.T) {
	h := newHarness(t, options{bake: "2s"})
	hosts, err := h.listHosts(h.opCoord())
	if err != nil {
		t.Fatal(err)
	}
	held := map[string][]string{}
	for _, hr := range hosts {
		held[hr.GetCoordinator()] = append(held[hr.GetCoordinator()], hr.GetId())
	}
	victim := h.coord("c2") // not the leader (c1); serves host-2 (wave 1) and host-5 (wave 2)
	if len(held[victim.name]) == 0 {
		t.Fatalf("%s holds no agent stream: %v", victim.name, held)
	}
	id := h.release("v2")
	r := h.waitRollout(id, 60*time.Second, "wave 1 updating", func(r *v1.Rollout) bool { return waveUpdating(r, 1) })
	h.logf("kill -9 %s (holds %v): %s", victim.name, held[victim.name], summary(r))
	killed := time.Now()
	victim.proc.Kill9()
	victim.down = true

	h.waitFor(30*time.Second, "the dead coordinator's agents on another coordinator", func() (bool, string) {
		hosts, err := h.listHosts(h.opCoord())
		if err != nil {
			return false, err.Error()
		}
		var why []string
		for _, hr := range hosts {
			if !hr.GetConnected() || hr.GetCoordinator() == victim.name || hr.GetCoordinator() == "" {
				why = append(why, fmt.Sprintf("%s connected=%v on %q", hr.GetId(), hr.GetConnected(), hr.GetCoordinator()))
			}
		}
		return len(why) == 0 && len(hosts) == nHosts, strings.Join(why, "; ")
	})
	h.logf("MEASURE scenario 5: %v on other coordinators %s after the kill", held[victim.name], time.Since(killed).Round(time.Millisecond))
	var resp v1.ListHostsResponse
	h.cliJSON(h.opCoord(), &resp, "hosts")
	for _, hr := range resp.GetHosts() {
		if hr.GetCoordinator() == victim.name {
			t.Errorf("hosts -o json: %s still on the dead %s", hr.GetId(), victim.name)
		}
	}
	h.waitFor(30*time.Second, victim.name+" leaves cluster status", func() (bool, string) {
		cs, err := h.clusterStatus(h.opCoord())
		if err != nil {
			return false, err.Error()
		}
		for _, c := range cs.GetCoordinators() {
			if c.GetName() == victim.name {
				return false, "still listed"
			}
		}
		return cs.GetLeader() == "c1", "leader " + cs.GetLeader()
	})
	h.verifyEnd(id, 90*time.Second)
	h.logf("MEASURE scenario 5: total %s", time.Since(h.began).Round(time.Millisecond))
}
