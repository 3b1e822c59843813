package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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
// etcd (in this process), and per coordinator one fleetwave-sim process
// (--control: driven through sim.RemoteFleet) with an equal share of the
// hosts, each host connected to its fleet's coordinator (agents take the
// first coordinator of their --coordinator list: an operator spreads a
// fleet by giving hosts different orders). It measures, per coordinator,
// its agents' share of its RSS (connected and after the first deploy, over
// the RSS before any agent), its CPU during a 3-wave rollout, its agents'
// delivery latency and its simulator's CPU meanwhile; and for the whole
// fleet the rollout from release create to every host reporting it and to
// SUCCEEDED. Every coordinator's share should stay what one coordinator
// costs for the same number of agents.
//
// The fleets always run in their own processes, at every size: a process
// holds one socket per simulated host and the open file limit (20,000 on
// the machine the issue names, not raisable there) bounds each process,
// not the sum; and the simulators' CPU then counts neither in this
// process's (which holds etcd) nor in each other's. One path, so that the
// small runs check what the large ones use. FLEETWAVE_SIM_BIN is a
// prebuilt fleetwave-sim (built otherwise); FLEETWAVE_SIM_SETTLE,
// FLEETWAVE_SIM_COORDINATOR, FLEETWAVE_SIM_PHASE_TIMEOUT,
// FLEETWAVE_SIM_QUIET and FLEETWAVE_SIM_OUT work as for TestScale. Each
// coordinator's and simulator's log is in a directory per coordinator
// (<hosts>-on-<k>-c<i>/coordinator.log and sim.log), named in the error
// when a run fails: in the test's temporary directory, or kept under
// FLEETWAVE_SIM_LOGS when set. Each coordinator's row counts the etcd
// sessions it lost (each ends all its agents' streams: the times of such
// a run are the recovery's) and its agents' dropped streams.
func TestScaleCoordinators(t *testing.T) {
	sizes := envList(t, "FLEETWAVE_SIM_SPREAD", "", parseSpreadSize)
	if len(sizes) == 0 {
		t.Skip("set FLEETWAVE_SIM_SPREAD=10000/1,20000/2 (hosts/coordinators) to run the spread harness")
	}
	bin := coordinatorBinary(t)
	simBin := simBinary(t)
	out := harnessOut(t)
	phaseTimeout = envDuration(t, "FLEETWAVE_SIM_PHASE_TIMEOUT", phaseTimeout)
	settle := envDuration(t, "FLEETWAVE_SIM_SETTLE", 5*time.Second)
	fmt.Fprintf(out, "\nfleetwave spread harness: %d CPUs, sizes %v\n", numCPU(), sizes)
	var rows []string
	for _, sz := range sizes {
		// The limit is per process: a coordinator and its simulator each
		// hold a socket per host of their share (and this process, with
		// etcd, a few per coordinator). Children inherit it.
		share := (sz.hosts + sz.coords - 1) / sz.coords
		limit, err := RaiseFileLimitTo(uint64(share) + 1000)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(share)+spreadFileSlack > limit {
			t.Errorf("%s: %d hosts per coordinator and simulator process: open file limit %d is too low (want %d)", sz, share, limit, share+spreadFileSlack)
			continue
		}
		r, err := runSpread(t, bin, simBin, sz.hosts, sz.coords, settle)
		if err != nil {
			t.Errorf("hosts=%d on %d coordinators: %v", sz.hosts, sz.coords, err)
			continue
		}
		r.print(out)
		rows = append(rows, r.rows()...)
	}
	if len(rows) > 0 {
		fmt.Fprintf(out, "\n| hosts | coordinators | rollout, 3 waves (all reported / SUCCEEDED) | coordinator | its agents | RSS per agent: connected / after first deploy | its CPU during the rollout | its agents' delivery p50 / p99 | its simulator's CPU | its etcd sessions lost / agent streams dropped |\n")
		fmt.Fprintf(out, "|---|---|---|---|---|---|---|---|---|---|\n")
		for _, row := range rows {
			fmt.Fprintln(out, row)
		}
	}
}

// spreadFileSlack is the open files a coordinator or simulator process
// needs besides one per host: etcd and metrics connections, logs,
// download connections (none without Config.Fetch), listeners.
const spreadFileSlack = 200

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
	simCPU                   float64 // its simulator process's cores during the rollout
	// sessionsLost counts its etcd sessions lost during the run (each
	// ended its agents' streams); drops counts its agents' streams that
	// ended after it answered (the simulator's Disconnects).
	sessionsLost int
	drops        uint64
}

// sessionLost is the coordinator's log message when its etcd lease expired.
const sessionLost = "etcd session lost"

func (r *spreadResult) print(w io.Writer) {
	fmt.Fprintf(w, "\n== %d hosts on %d coordinators ==\n", r.hosts, r.coords)
	fmt.Fprintf(w, "connect all hosts:                 %s\n", ms(r.connect))
	fmt.Fprintf(w, "rollout v1→v2 (3 waves):           all reported %s, SUCCEEDED seen %s\n", ms(r.rollout.allReported), ms(r.rollout.succeeded))
	fmt.Fprintf(w, "    its timeline (leader):         %s\n", r.rollout.waves)
	for i, c := range r.per {
		fmt.Fprintf(w, "coordinator %d: %d agents, VmRSS %.1f MiB with none, %.1f KiB per agent connected, %.1f KiB after the first deploy; %.2f cores during the rollout; delivery p50 %s, p99 %s; its simulator %.2f cores; etcd sessions lost %d, agent streams dropped %d\n",
			i, c.agents, float64(c.rssBase)/(1<<20), c.perAgent(c.rssConn), c.perAgent(c.rssDep), c.rolloutCPU,
			c.latency.P50.Round(time.Millisecond/10), c.latency.P99.Round(time.Millisecond/10), c.simCPU, c.sessionsLost, c.drops)
	}
}

func (c coordShare) perAgent(rss int64) float64 {
	return float64(rss-c.rssBase) / float64(c.agents) / 1024
}

func (r *spreadResult) rows() []string {
	var out []string
	for i, c := range r.per {
		out = append(out, fmt.Sprintf("| %d | %d | %s / %s | %d | %d | %.1f / %.1f KiB | %.2f cores | %s / %s | %.2f cores | %d / %d |", r.hosts, r.coords,
			ms(r.rollout.allReported), ms(r.rollout.succeeded), i, c.agents, c.perAgent(c.rssConn), c.perAgent(c.rssDep), c.rolloutCPU,
			c.latency.P50.Round(time.Millisecond/10), c.latency.P99.Round(time.Millisecond/10), c.simCPU, c.sessionsLost, c.drops))
	}
	return out
}

// runSpread measures n hosts spread over k coordinators, one simulator
// process per coordinator.
func runSpread(t *testing.T, bin, simBin string, n, k int, settle time.Duration) (_ *spreadResult, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	etcd := startEtcd(t)
	res := &spreadResult{hosts: n, coords: k, per: make([]coordShare, k)}
	procs := make([]*proc, k)
	dirs := make([]string, k)
	defer func() {
		for i, dir := range dirs {
			if dir == "" {
				continue
			}
			res.per[i].sessionsLost = countLines(filepath.Join(dir, "coordinator.log"), sessionLost)
			if err != nil {
				err = fmt.Errorf("%w; coordinator %d (log in %s) lost its etcd session %d times, warnings: %s; its simulator's: %s", err, i, dir,
					res.per[i].sessionsLost, problems(filepath.Join(dir, "coordinator.log"), 3), problems(filepath.Join(dir, "sim.log"), 3))
			}
		}
	}()
	for i := range k {
		if dirs[i], err = harnessDir(t, fmt.Sprintf("%d-on-%d-c%d", n, k, i)); err != nil {
			return nil, err
		}
		p, err := startCoordinatorProc(t, bin, dirs[i], etcd, ports.Addr(t), n/k+1)
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

	// One simulator per coordinator, host ids apart (sim0-00000, sim1-00000...).
	sims := make([]*simProc, k)
	start := time.Now()
	for i, p := range procs {
		hosts := n / k
		if i < n%k {
			hosts++
		}
		res.per[i].agents = hosts
		cfg := Config{Coordinator: p.addr, Hosts: hosts, HostPrefix: fmt.Sprintf("sim%d-", i), Seed: int64(i + 1), SourceAddrs: max(1, hosts/500),
			QuietPhases: os.Getenv("FLEETWAVE_SIM_QUIET") == "1"}
		s, err := startSimProc(simBin, dirs[i], cfg)
		if err != nil {
			return nil, fmt.Errorf("simulator of coordinator %d: %w", i, err)
		}
		defer s.stop()
		sims[i] = s
	}
	for i, s := range sims {
		if err := s.WaitConnected(ctx, res.per[i].agents); err != nil {
			return nil, fmt.Errorf("simulator of coordinator %d: %w", i, err)
		}
	}
	res.connect = time.Since(start)
	sleep(ctx, settle)
	for i, p := range procs {
		if res.per[i].rssConn, _, err = procStat(p.cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	if _, err := spreadRollout(ctx, sims, o, svc, "v1"); err != nil {
		return nil, err
	}
	sleep(ctx, settle)
	cpu0, simCPU0 := make([]float64, k), make([]float64, k)
	for i, p := range procs {
		if res.per[i].rssDep, cpu0[i], err = procStat(p.cmd.Process.Pid); err != nil {
			return nil, err
		}
		if _, simCPU0[i], err = procStat(sims[i].cmd.Process.Pid); err != nil {
			return nil, err
		}
	}
	for i, s := range sims {
		if err := s.ResetLatency(ctx); err != nil {
			return nil, fmt.Errorf("simulator of coordinator %d: %w", i, err)
		}
	}
	r0 := time.Now()
	if res.rollout, err = spreadRollout(ctx, sims, o, svc, "v2"); err != nil {
		return nil, err
	}
	el := time.Since(r0).Seconds()
	for i, p := range procs {
		_, cpu1, err := procStat(p.cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		_, simCPU1, err := procStat(sims[i].cmd.Process.Pid)
		if err != nil {
			return nil, err
		}
		res.per[i].rolloutCPU = (cpu1 - cpu0[i]) / el
		res.per[i].simCPU = (simCPU1 - simCPU0[i]) / el
		st, err := sims[i].Stats(ctx)
		if err != nil {
			return nil, fmt.Errorf("simulator of coordinator %d: %w", i, err)
		}
		res.per[i].latency = st.Latency
		res.per[i].drops = st.Disconnects
	}
	return res, nil
}

// spreadRollout is timedRollout over several simulators: every host of
// every one reporting the release, then the rollout SUCCEEDED.
func spreadRollout(ctx context.Context, sims []*simProc, o *operator, svc, version string) (timing, error) {
	tm, err := spreadRolloutOnce(ctx, sims, o, svc, version)
	if err != nil {
		return tm, fmt.Errorf("rollout to %s (phase timeout %s, FLEETWAVE_SIM_PHASE_TIMEOUT): %w", version, phaseTimeout, err)
	}
	return tm, nil
}

func spreadRolloutOnce(ctx context.Context, sims []*simProc, o *operator, svc, version string) (timing, error) {
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
	for i, s := range sims {
		wg.Go(func() {
			err := s.WaitAll(wctx, svc, version)
			mu.Lock()
			defer mu.Unlock()
			tm.allReported = max(tm.allReported, time.Since(start))
			if err != nil {
				errs = append(errs, fmt.Errorf("simulator of coordinator %d: %w", i, err))
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

// simProc is a fleetwave-sim --control process, driven through its
// RemoteFleet.
type simProc struct {
	*RemoteFleet
	cmd  *exec.Cmd
	in   *os.File // its stdin: closing it ends the simulator
	out  *os.File // its stdout, read by the RemoteFleet
	done chan error
}

// startSimProc starts the simulator for cfg in --control mode, its log
// (warnings) in dir/sim.log. It returns once the process runs: use
// WaitConnected for its hosts.
func startSimProc(bin, dir string, cfg Config) (*simProc, error) {
	logf, err := os.Create(filepath.Join(dir, "sim.log"))
	if err != nil {
		return nil, err
	}
	args := []string{"--control", "--log-level", "warn", "--coordinator", cfg.Coordinator, "--hosts", strconv.Itoa(cfg.Hosts),
		"--host-prefix", cfg.HostPrefix, "--seed", strconv.FormatInt(cfg.Seed, 10), "--source-addrs", strconv.Itoa(cfg.SourceAddrs)}
	if cfg.QuietPhases {
		args = append(args, "--quiet-phases")
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		logf.Close()
		inR.Close()
		inW.Close()
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	// The simulator dies with this process, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, logf
	err = cmd.Start()
	// The child holds its ends now; ours are closed so that its exit ends
	// the reads (Wait would close pipes of StdoutPipe under the reader).
	inR.Close()
	outW.Close()
	if err != nil {
		logf.Close()
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &simProc{RemoteFleet: NewRemoteFleet(inW, outR), cmd: cmd, in: inW, out: outR, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		logf.Close()
		s.done <- err
	}()
	return s, nil
}

// stop ends the simulator (end of its stdin; SIGKILL after 30 s) and
// closes the pipes.
func (s *simProc) stop() {
	s.in.Close()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.out.Close()
}

// countLines is the number of lines of the file at path that contain
// substr (0 if it cannot be read).
func countLines(path, substr string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}
