package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// TestScaleCoordinators is the scale harness with the fleet spread over
// several coordinators sharing one etcd. Skipped unless
// FLEETWAVE_SIM_SPREAD gives the fleet sizes and the number of
// coordinators:
//
//	FLEETWAVE_SIM_SPREAD=10000/1,20000/2 go test -run '^TestScaleCoordinators$' -v -timeout 60m ./internal/testkit/sim
//
// For each size it starts that many fleetwave-coordinator processes on one
// etcd (in this process), and one simulated fleet per coordinator with an
// equal share of the hosts, each host connected to its fleet's
// coordinator (agents take the first coordinator of their --coordinator
// list: an operator spreads a fleet by giving hosts different orders). It
// measures, per coordinator, its agents' share of its RSS (connected and
// after the first deploy, over the RSS before any agent), its CPU during a
// 3-wave rollout and its agents' delivery latency; and for the whole fleet
// the rollout from release create to every host reporting it and to
// SUCCEEDED. Every coordinator's share should stay what one coordinator
// costs for the same number of agents. FLEETWAVE_SIM_SETTLE,
// FLEETWAVE_SIM_COORDINATOR, FLEETWAVE_SIM_PHASE_TIMEOUT and
// FLEETWAVE_SIM_OUT work as for TestScale.
func TestScaleCoordinators(t *testing.T) {
	spec := os.Getenv("FLEETWAVE_SIM_SPREAD")
	if spec == "" {
		t.Skip("set FLEETWAVE_SIM_SPREAD=10000/1,20000/2 (hosts/coordinators) to run the spread harness")
	}
	type size struct{ hosts, coords int }
	var sizes []size
	for _, s := range strings.Split(spec, ",") {
		h, c, ok := strings.Cut(strings.TrimSpace(s), "/")
		n, err1 := strconv.Atoi(h)
		k, err2 := strconv.Atoi(c)
		if !ok || err1 != nil || err2 != nil || n < 1 || k < 1 || k > 16 || n < k {
			t.Fatalf("FLEETWAVE_SIM_SPREAD: %q is not hosts/coordinators (coordinators 1..16, at most one per host)", s)
		}
		sizes = append(sizes, size{n, k})
	}
	bin := os.Getenv("FLEETWAVE_SIM_COORDINATOR")
	if bin == "" {
		bin = buildCoordinator(t)
	}
	out := io.Writer(os.Stdout)
	if p := os.Getenv("FLEETWAVE_SIM_OUT"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out = io.MultiWriter(os.Stdout, f)
	}
	phaseTimeout = envDuration(t, "FLEETWAVE_SIM_PHASE_TIMEOUT", phaseTimeout)
	settle := envDuration(t, "FLEETWAVE_SIM_SETTLE", 5*time.Second)
	fmt.Fprintf(out, "\nfleetwave spread harness: %d CPUs, sizes %v\n", numCPU(), sizes)
	var rows []string
	for _, sz := range sizes {
		// Every host holds a socket here, and its coordinator one.
		limit, err := RaiseFileLimitTo(uint64(sz.hosts) + 1000)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(sz.hosts)+200 > limit {
			t.Errorf("hosts=%d: open file limit %d is too low", sz.hosts, limit)
			continue
		}
		r, err := runSpread(t, bin, sz.hosts, sz.coords, settle)
		if err != nil {
			t.Errorf("hosts=%d on %d coordinators: %v", sz.hosts, sz.coords, err)
			continue
		}
		r.print(out)
		rows = append(rows, r.rows()...)
	}
	if len(rows) > 0 {
		fmt.Fprintf(out, "\n| hosts | coordinators | rollout, 3 waves (all reported / SUCCEEDED) | coordinator | its agents | RSS per agent: connected / after first deploy | its CPU during the rollout | its agents' delivery p50 / p99 |\n")
		fmt.Fprintf(out, "|---|---|---|---|---|---|---|---|\n")
		for _, row := range rows {
			fmt.Fprintln(out, row)
		}
	}
}

type spreadResult struct {
	hosts, coords int
	connect       time.Duration
	rollout       timing
	per           []coordShare
}

type coordShare struct {
	agents                   int
	rssBase, rssConn, rssDep int64
	rolloutCPU               float64
	latency                  Latency
}

func (r *spreadResult) print(w io.Writer) {
	fmt.Fprintf(w, "\n== %d hosts on %d coordinators ==\n", r.hosts, r.coords)
	fmt.Fprintf(w, "connect all hosts:                 %s\n", ms(r.connect))
	fmt.Fprintf(w, "rollout v1→v2 (3 waves):           all reported %s, SUCCEEDED seen %s\n", ms(r.rollout.allReported), ms(r.rollout.succeeded))
	fmt.Fprintf(w, "    its timeline (leader):         %s\n", r.rollout.waves)
	for i, c := range r.per {
		fmt.Fprintf(w, "coordinator %d: %d agents, VmRSS %.1f MiB with none, %.1f KiB per agent connected, %.1f KiB after the first deploy; %.2f cores during the rollout; delivery p50 %s, p99 %s\n",
			i, c.agents, float64(c.rssBase)/(1<<20), c.perAgent(c.rssConn), c.perAgent(c.rssDep), c.rolloutCPU,
			c.latency.P50.Round(time.Millisecond/10), c.latency.P99.Round(time.Millisecond/10))
	}
}

func (c coordShare) perAgent(rss int64) float64 {
	return float64(rss-c.rssBase) / float64(c.agents) / 1024
}

func (r *spreadResult) rows() []string {
	var out []string
	for i, c := range r.per {
		out = append(out, fmt.Sprintf("| %d | %d | %s / %s | %d | %d | %.1f / %.1f KiB | %.2f cores | %s / %s |", r.hosts, r.coords,
			ms(r.rollout.allReported), ms(r.rollout.succeeded), i, c.agents, c.perAgent(c.rssConn), c.perAgent(c.rssDep), c.rolloutCPU,
			c.latency.P50.Round(time.Millisecond/10), c.latency.P99.Round(time.Millisecond/10)))
	}
	return out
}

// runSpread measures n hosts spread over k coordinators.
func runSpread(t *testing.T, bin string, n, k int, settle time.Duration) (*spreadResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	etcd := startEtcd(t)
	res := &spreadResult{hosts: n, coords: k, per: make([]coordShare, k)}
	procs := make([]*proc, k)
	for i := range k {
		dir := filepath.Join(t.TempDir(), fmt.Sprintf("c%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		p, err := startCoordinatorProc(bin, dir, etcd, ports.Addr(t), n/k+1)
		if err != nil {
			return nil, fmt.Errorf("coordinator %d: %w", i, err)
		}
		defer p.stop()
		procs[i] = p
	}
	o, err := dialOperator(ctx, procs[0].addr)
	if err != nil {
		return nil, err
	}
	defer o.cc.Close()
	const svc = "web"
	if err := o.apply(ctx, simSpec(svc, 1, []uint32{50, 100}, uint32(n))); err != nil {
		return nil, err
	}
	sleep(ctx, settle)
	for i, p := range procs {
		if res.per[i].rssBase, _, err = procStat(p.cmd.Process.Pid); err != nil {
			return nil, err
		}
	}

	// One fleet per coordinator, host ids apart (sim0-00000, sim1-00000...).
	fleets := make([]*Fleet, k)
	start := time.Now()
	for i, p := range procs {
		hosts := n / k
		if i < n%k {
			hosts++
		}
		res.per[i].agents = hosts
		cfg := Config{Coordinator: p.addr, Hosts: hosts, HostPrefix: fmt.Sprintf("sim%d-", i), Seed: int64(i + 1), SourceAddrs: max(1, hosts/500)}
		f, err := Start(ctx, cfg, zerolog.Nop())
		if err != nil {
			return nil, fmt.Errorf("fleet of coordinator %d: %w", i, err)
		}
		defer f.Close()
		fleets[i] = f
	}
	for i, f := range fleets {
		if err := f.WaitConnected(ctx, res.per[i].agents); err != nil {
			return nil, fmt.Errorf("fleet of coordinator %d: %w", i, err)
		}
	}
	res.connect = time.Since(start)
	sleep(ctx, settle)
	for i, p := range procs {
		if res.per[i].rssConn, _, err = procStat(p.cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	if _, err := spreadRollout(ctx, fleets, o, svc, "v1"); err != nil {
		return nil, err
	}
	sleep(ctx, settle)
	cpu0 := make([]float64, k)
	for i, p := range procs {
		if res.per[i].rssDep, cpu0[i], err = procStat(p.cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	for _, f := range fleets {
		f.ResetLatency()
	}
	r0 := time.Now()
	if res.rollout, err = spreadRollout(ctx, fleets, o, svc, "v2"); err != nil {
		return nil, err
	}
	el := time.Since(r0).Seconds()
	for i, p := range procs {
		_, cpu1, err := procStat(p.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		res.per[i].rolloutCPU = (cpu1 - cpu0[i]) / el
		res.per[i].latency = fleets[i].Stats().Latency
	}
	return res, nil
}

// spreadRollout is timedRollout over several fleets: every host of every
// fleet reporting the release, then the rollout SUCCEEDED.
func spreadRollout(ctx context.Context, fleets []*Fleet, o *operator, svc, version string) (timing, error) {
	var tm timing
	start := time.Now()
	if _, err := o.release(ctx, svc, version); err != nil {
		return tm, err
	}
	wctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, f := range fleets {
		wg.Go(func() {
			err := f.WaitAll(wctx, svc, version)
			mu.Lock()
			defer mu.Unlock()
			tm.allReported = max(tm.allReported, time.Since(start))
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return tm, err
	}
	r, err := o.waitRollout(wctx, svc, ended(version))
	if err != nil {
		return tm, err
	}
	tm.succeeded = time.Since(start)
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		return tm, fmt.Errorf("rollout to %s: %v %s", version, r.GetState(), r.GetReason())
	}
	tm.waves = waveTimeline(ctx, o, svc, r, start)
	return tm, nil
}
