package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The scale harness (make bench). It is a test, skipped unless
// FLEETWAVE_SIM_HOSTS lists fleet sizes, because it measures rather than
// asserts timings:
//
//	FLEETWAVE_SIM_HOSTS=1000,5000,10000 go test -run '^TestScale$' -v -timeout 60m ./internal/testkit/sim
//
// For each size it builds and starts the real fleetwave-coordinator binary
// as a separate process, on an etcd of its own (a third process,
// startScaleEtcd; FLEETWAVE_SIM_ETCD=inprocess runs it in the test process
// instead, as tables measured before 2026-12-06 did; the coordinator's
// embedded etcd serves the coordinator alone since issue 13, and the
// harness watches etcd; its RSS therefore no longer counts in the
// coordinator's, unlike in tables measured before), connects a simulated fleet with
// zero install and check time, and measures: the initial deploy and a
// 3-wave rollout (canary 1, waves 50% and 100%, max_parallel = fleet, no
// bake) from release create to every host reporting the target and to the
// rollout SUCCEEDED; assignment delivery latency (coordinator sent_at to
// sim receipt, and to the kernel's receive time at the host's socket:
// arrivalConn); the coordinator's RSS per connected agent (VmRSS with the
// fleet connected minus VmRSS with none, over N); its CPU over 10 s with
// the fleet connected and idle; etcd writes per phase by key kind (from a
// watch on /fleetwave/v1/); and the time to put the whole fleet back on the
// previous release after the last wave fails.
//
// Other knobs: FLEETWAVE_SIM_LOGS (keep the coordinator's log and data
// there), FLEETWAVE_SIM_SETTLE (wait before reading RSS, default 5s),
// FLEETWAVE_SIM_IDLE (idle CPU window, default 10s), FLEETWAVE_SIM_OUT
// (also append the tables to this file), FLEETWAVE_SIM_PERF (a directory:
// record the coordinator with `perf record -g` during the rollouts),
// FLEETWAVE_SIM_COORDINATOR (a prebuilt coordinator binary),
// FLEETWAVE_SIM_PHASE_TIMEOUT (bound on one rollout, default 5m),
// FLEETWAVE_SIM_COORDINATOR_ENV (space-separated VAR=value for the
// coordinator process only, e.g. GOGC=50), FLEETWAVE_SIM_ETCD_TXN_OPS
// (the coordinator's --etcd-max-txn-ops, default 1024 as with its embedded
// etcd; 128 is an external etcd's default), FLEETWAVE_SIM_QUIET=1 (hosts report only outcomes, not FETCHING and
// CHECKING: what the coordinator would see if it did not persist them), FLEETWAVE_SIM_INSTALL (each
// simulated install's time, default 0: with 0 the first hosts of a wave report while the
// coordinator still sends the wave's last sets, so their reports' handling is in the
// delivery latency; real installs take seconds).
func TestScale(t *testing.T) {
	sizes := envList(t, "FLEETWAVE_SIM_HOSTS", "", fleetSize(1))
	if len(sizes) == 0 {
		t.Skip("set FLEETWAVE_SIM_HOSTS=1000,5000,10000 to run the scale harness")
	}
	limit, err := RaiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	bin := coordinatorBinary(t)
	out := harnessOut(t)
	fmt.Fprintf(out, "\nfleetwave scale harness: %d CPUs, open file limit %d, sizes %v, quiet phases %v\n", numCPU(), limit, sizes, os.Getenv("FLEETWAVE_SIM_QUIET") == "1")
	var results []*scaleResult
	for _, n := range sizes {
		if uint64(n)+200 > limit {
			t.Errorf("hosts=%d: open file limit %d is too low", n, limit)
			continue
		}
		r, err := runScale(t, bin, n)
		if err != nil {
			t.Errorf("hosts=%d: %v", n, err)
			continue
		}
		r.print(out)
		results = append(results, r)
	}
	printSummary(out, results)
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "processor\t:")
}

// proc is the coordinator process.
type proc struct {
	cmd     *exec.Cmd
	done    chan error
	addr    string
	etcd    []string
	metrics string // host:port of its /metrics
}

// startCoordinatorProc starts the binary on etcd for a fleet of n hosts and
// waits for its "coordinator serving" log line, which names the listen
// address and etcd endpoints.
func startCoordinatorProc(t testing.TB, bin, dir, etcd, metrics string, n int) (*proc, error) {
	txnOps := envInt(t, "FLEETWAVE_SIM_ETCD_TXN_OPS", 1024, 128, 4096)
	logf, err := os.Create(filepath.Join(dir, "coordinator.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "data"), "--log-level", "info", "--insecure",
		"--etcd-endpoints", etcd, "--max-connections", strconv.Itoa(n+1000), // the default (4096) fits a 1000-host fleet
		"--metrics-listen", metrics, "--etcd-max-txn-ops", strconv.FormatInt(txnOps, 10))
	// The coordinator dies with this process, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), strings.Fields(os.Getenv("FLEETWAVE_SIM_COORDINATOR_ENV"))...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = logf, pw
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1), metrics: metrics}
	type serving struct {
		Addr string   `json:"addr"`
		Etcd []string `json:"etcd"`
		Msg  string   `json:"message"`
	}
	ready := make(chan serving, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = logf.Write(append(line, '\n'))
			if !found && strings.Contains(string(line), "coordinator serving") {
				var s serving
				if json.Unmarshal(line, &s) == nil && s.Addr != "" {
					found = true
					ready <- s
				}
			}
		}
		_, _ = io.Copy(logf, pr)
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		logf.Close()
		p.done <- err
	}()
	select {
	case s := <-ready:
		p.addr, p.etcd = s.Addr, s.Etcd
		return p, nil
	case err := <-p.done:
		return nil, fmt.Errorf("coordinator exited before serving: %v (log in %s)", err, dir)
	case <-time.After(60 * time.Second):
		p.stop()
		return nil, fmt.Errorf("coordinator not serving after 60s (log in %s)", dir)
	}
}

// stop ends the coordinator process (SIGTERM, then SIGKILL after 15 s).
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// etcdCPU is the CPU seconds of etcd's process (0 for pid 0: in this one).
func etcdCPU(pid int) float64 {
	if pid == 0 {
		return 0
	}
	_, cpu, _ := procStat(pid)
	return cpu
}

// procStat reads VmRSS (bytes) and utime+stime (seconds) of pid.
func procStat(pid int) (rss int64, cpu float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb << 10
		}
	}
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14
	st, _ := strconv.ParseFloat(f[12], 64) // field 15
	return rss, (ut + st) / 100, nil       // USER_HZ = 100 on Linux
}

// writeCounter counts etcd writes under /fleetwave/v1/ by the key's first
// segment (services, rollouts, reports...).
type writeCounter struct {
	mu     sync.Mutex
	counts map[string]*kindCount
	revs   map[int64]bool
	// reportRevs are the revisions that wrote a report: the report
	// transactions (a load-independent figure of the report path).
	reportRevs map[int64]bool
	last       int64
	cond       chan struct{}
}

type kindCount struct {
	Puts, Deletes int
	Bytes         int64
}

func newWriteCounter(ctx context.Context, cli *clientv3.Client) *writeCounter {
	w := &writeCounter{counts: map[string]*kindCount{}, revs: map[int64]bool{}, reportRevs: map[int64]bool{}, cond: make(chan struct{})}
	rev := int64(0)
	if resp, err := cli.Get(ctx, "/fleetwave/v1/none"); err == nil {
		rev = resp.Header.Revision
	}
	wc := cli.Watch(ctx, "/fleetwave/v1/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	go func() {
		for resp := range wc {
			w.mu.Lock()
			for _, ev := range resp.Events {
				kind := strings.SplitN(strings.TrimPrefix(string(ev.Kv.Key), "/fleetwave/v1/"), "/", 2)[0]
				c := w.counts[kind]
				if c == nil {
					c = &kindCount{}
					w.counts[kind] = c
				}
				if ev.Type == clientv3.EventTypePut {
					c.Puts++
					c.Bytes += int64(len(ev.Kv.Value))
				} else {
					c.Deletes++
				}
				w.revs[ev.Kv.ModRevision] = true
				if kind == "reports" {
					w.reportRevs[ev.Kv.ModRevision] = true
				}
			}
			if resp.Header.Revision > w.last {
				w.last = resp.Header.Revision
			}
			close(w.cond)
			w.cond = make(chan struct{})
			w.mu.Unlock()
		}
	}()
	return w
}

// take waits until the watch has seen every write up to now and returns
// the counts since the last take (and the number of etcd revisions, and of
// those that wrote reports).
func (w *writeCounter) take(ctx context.Context, cli *clientv3.Client) (map[string]kindCount, int, int, error) {
	resp, err := cli.Get(ctx, "/fleetwave/v1/none")
	if err != nil {
		return nil, 0, 0, err
	}
	want := resp.Header.Revision
	for {
		w.mu.Lock()
		last, ch := w.last, w.cond
		if last >= want || want == 0 {
			out := map[string]kindCount{}
			for k, c := range w.counts {
				out[k] = *c
			}
			revs, reportRevs := len(w.revs), len(w.reportRevs)
			w.counts, w.revs, w.reportRevs = map[string]*kindCount{}, map[int64]bool{}, map[int64]bool{}
			w.mu.Unlock()
			return out, revs, reportRevs, nil
		}
		w.mu.Unlock()
		// The watch's own revision lags when the newest write is not
		// under the prefix: poll as well as wait.
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			if r, err := cli.Get(ctx, "/fleetwave/v1/none"); err == nil && r.Header.Revision == want {
				w.mu.Lock()
				if w.last < want {
					w.last = want // nothing under the prefix was written since
				}
				w.mu.Unlock()
			}
		case <-ctx.Done():
			return nil, 0, 0, ctx.Err()
		}
	}
}

type phaseWrites struct {
	name       string
	counts     map[string]kindCount
	revs       int
	reportTxns int // revisions that wrote reports
}

type timing struct {
	allReported time.Duration // release create -> every host reported the target
	succeeded   time.Duration // release create -> rollout SUCCEEDED seen
	waves       string        // the coordinator's wave timeline, from its events
	phases      string        // each wave as the simulator saw it (wavePhases)
}

type scaleResult struct {
	n            int
	connect      time.Duration
	initial      timing
	rollout      timing
	latency      Latency
	sockLatency  Latency // to the hosts' sockets (Stats.SocketLatency)
	rssBase      int64
	rssConnected int64 // with the fleet connected, before any release
	rssN         int64 // after the initial deploy
	// goBase, goConnected and goN are the coordinator's Go memory at the
	// same three moments (its /metrics).
	goBase, goConnected, goN goMem
	idleCPU                  float64 // cores
	simIdleCPU               float64 // cores used by this (the sim's) process meanwhile
	rolloutCPU               float64 // coordinator cores during the rollout
	simRolloutCPU            float64 // this process's cores meanwhile
	etcdRolloutCPU           float64 // etcd's, when a process of its own (else in simRolloutCPU)
	writes                   []phaseWrites
	failDetect               time.Duration // failing report sent -> rollout FAILED (coordinator's finished_at)
	rollback                 time.Duration // failing report sent -> every host reports the previous release
	rollbackFrom             time.Duration // release create -> failing report sent
	failReason               string
	rolloutBytes             int64   // size of the rollout record at the end
	txns                     int     // the coordinator's etcd transactions during the rollout
	txnMean                  float64 // their mean latency, seconds
	notes                    []string
}

// runScale measures one fleet size.
func runScale(t *testing.T, bin string, n int) (_ *scaleResult, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dir, err := harnessDir(t, fmt.Sprintf("coordinator-%d", n))
	if err != nil {
		return nil, err
	}
	res := &scaleResult{n: n}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w; coordinator warnings: %s", err, problems(filepath.Join(dir, "coordinator.log"), 5))
		}
	}()
	etcd, etcdPid := startScaleEtcd(t)
	p, err := startCoordinatorProc(t, bin, dir, etcd, ports.Addr(t), n)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	pid := p.cmd.Process.Pid
	var perf *exec.Cmd
	if pd := os.Getenv("FLEETWAVE_SIM_PERF"); pd != "" {
		perf = exec.Command("perf", "record", "-F", "499", "-g", "-p", strconv.Itoa(pid), "-o", filepath.Join(pd, fmt.Sprintf("coordinator-%d.perf.data", n)))
		perf.Stdout, perf.Stderr = io.Discard, io.Discard
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: p.etcd, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()
	wc := newWriteCounter(ctx, cli)
	phase := func(name string) error {
		c, revs, reportTxns, err := wc.take(ctx, cli)
		if err != nil {
			return fmt.Errorf("etcd writes of %s: %w", name, err)
		}
		res.writes = append(res.writes, phaseWrites{name: name, counts: c, revs: revs, reportTxns: reportTxns})
		return nil
	}
	o, err := dialOperator(ctx, p.addr)
	if err != nil {
		return nil, err
	}
	defer o.cc.Close()
	const svc = "web"
	if err := o.apply(ctx, simSpec(svc, 1, []uint32{50, 100}, uint32(n))); err != nil {
		return nil, err
	}
	phaseTimeout = envDuration(t, "FLEETWAVE_SIM_PHASE_TIMEOUT", phaseTimeout)
	settle := envDuration(t, "FLEETWAVE_SIM_SETTLE", 5*time.Second)
	idle := envDuration(t, "FLEETWAVE_SIM_IDLE", 10*time.Second)
	sleep(ctx, settle)
	if res.rssBase, _, err = procStat(pid); err != nil {
		return nil, err
	}
	res.goBase = scrapeGoMem(ctx, p.metrics, res)
	if err := phase("setup"); err != nil {
		return nil, err
	}

	// Connect the fleet.
	cfg := Config{Coordinator: p.addr, Hosts: n, Seed: 1, SourceAddrs: max(1, n/500),
		QuietPhases: os.Getenv("FLEETWAVE_SIM_QUIET") == "1", InstallDelay: envDuration(t, "FLEETWAVE_SIM_INSTALL", 0)}
	start := time.Now()
	f, err := Start(ctx, cfg, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.WaitConnected(ctx, n); err != nil {
		return res, err
	}
	res.connect = time.Since(start)
	sleep(ctx, settle)
	if res.rssConnected, _, err = procStat(pid); err != nil {
		return res, err
	}
	res.goConnected = scrapeGoMem(ctx, p.metrics, res)
	if err := phase(fmt.Sprintf("connect %d hosts", n)); err != nil {
		return res, err
	}

	// Initial deploy (from nothing), then the measured rollout.
	if res.initial, err = timedRollout(ctx, f, o, svc, "v1"); err != nil {
		return res, err
	}
	if err := phase("initial deploy v1"); err != nil {
		return res, err
	}
	sleep(ctx, settle)
	rss, cpu0, err := procStat(pid)
	if err != nil {
		return res, err
	}
	res.rssN = rss
	res.goN = scrapeGoMem(ctx, p.metrics, res)
	_, self0, _ := procStat(os.Getpid())
	t0 := time.Now()
	sleep(ctx, idle)
	_, cpu1, err := procStat(pid)
	if err != nil {
		return res, err
	}
	_, self1, _ := procStat(os.Getpid())
	el := time.Since(t0).Seconds()
	res.idleCPU, res.simIdleCPU = (cpu1-cpu0)/el, (self1-self0)/el
	if err := phase(fmt.Sprintf("idle %s, all connected", idle)); err != nil {
		return res, err
	}

	if perf != nil {
		if err := perf.Start(); err != nil {
			res.notes = append(res.notes, "perf record: "+err.Error())
			perf = nil
		}
	}
	f.ResetLatency()
	_, c0, _ := procStat(pid)
	_, s0, _ := procStat(os.Getpid())
	e0 := etcdCPU(etcdPid)
	n0, sum0, _ := etcdTxns(ctx, p.metrics)
	rw0, _ := reportWriterCounts(ctx, p.metrics)
	r0 := time.Now()
	if res.rollout, err = timedRollout(ctx, f, o, svc, "v2"); err != nil {
		return res, err
	}
	if n1, sum1, err := etcdTxns(ctx, p.metrics); err == nil && n1 > n0 {
		res.txns, res.txnMean = int(n1-n0), (sum1-sum0)/(n1-n0)
	} else if err != nil {
		res.notes = append(res.notes, "metrics: "+err.Error())
	}
	if rw1, err := reportWriterCounts(ctx, p.metrics); err == nil && rw1[0] > rw0[0] {
		res.notes = append(res.notes, fmt.Sprintf("report writer during the rollout: %.0f transactions, %.0f reports written, %.0f coalesced",
			rw1[0]-rw0[0], rw1[1]-rw0[1], rw1[2]-rw0[2]))
	}
	_, c1, _ := procStat(pid)
	_, s1, _ := procStat(os.Getpid())
	res.rolloutCPU = (c1 - c0) / time.Since(r0).Seconds()
	res.simRolloutCPU = (s1 - s0) / time.Since(r0).Seconds()
	if etcdPid != 0 {
		res.etcdRolloutCPU = (etcdCPU(etcdPid) - e0) / time.Since(r0).Seconds()
	}
	st := f.Stats()
	res.latency, res.sockLatency = st.Latency, st.SocketLatency
	if err := phase("rollout v1→v2 (3 waves)"); err != nil {
		return res, err
	}
	if r, err := o.op.GetRollout(ctx, &v1.GetRolloutRequest{Service: svc}); err == nil {
		res.rolloutBytes = int64(proto.Size(r.GetRollout()))
	}

	// The last wave fails: one host of it fails its install of v3.
	if err := failingRollout(ctx, f, o, svc, res); err != nil {
		return res, err
	}
	if err := phase("rollout v3 failing in its last wave + rollback to v2"); err != nil {
		return res, err
	}
	if perf != nil {
		_ = perf.Process.Signal(syscall.SIGINT)
		_ = perf.Wait()
	}
	return res, nil
}

// phaseTimeout bounds one rollout of the harness.
var phaseTimeout = 5 * time.Minute

// problems returns the last k warning or error lines of a log (distinct).
func problems(path string, k int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	seen := map[string]bool{}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0 && len(out) < k; i-- {
		l := lines[i]
		if !strings.Contains(l, `"level":"warn"`) && !strings.Contains(l, `"level":"error"`) {
			continue
		}
		var m struct{ Error, Message string }
		_ = json.Unmarshal([]byte(l), &m)
		key := m.Message + ": " + m.Error
		if !seen[key] {
			seen[key] = true
			out = append(out, key)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "; ")
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// timedRollout creates a release and times it to every host reporting it
// (sim side) and to the rollout SUCCEEDED (coordinator side: its
// service's stable release, written with the decision). The service is
// polled only once every host reported, not to load the coordinator.
func timedRollout(ctx context.Context, f *Fleet, o *operator, svc, version string) (timing, error) {
	var tm timing
	start := time.Now()
	if _, err := o.release(ctx, svc, version); err != nil {
		return tm, err
	}
	wctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	if err := f.WaitAll(wctx, svc, version); err != nil {
		return tm, err
	}
	tm.allReported = time.Since(start)
	r, err := o.waitStable(wctx, svc, version)
	if err != nil {
		return tm, err
	}
	tm.succeeded = time.Since(start)
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		return tm, fmt.Errorf("rollout to %s: %v %s", version, r.GetState(), r.GetReason())
	}
	tm.waves = waveTimeline(ctx, o, svc, r, start)
	tm.phases = wavePhases(ctx, f, o, svc, r, start)
	return tm, nil
}

// wavePhases is each wave as the simulator saw it, between the
// coordinator's wave_started (rollout_created for the first) and
// wave_done: when its hosts received their sets (first and last), when the
// last HEALTHY report was sent, and when the coordinator decided the wave
// was done (offsets from start). It splits a wave's time into the leader's
// start (write, push pass), the burst of sets, and the report path with
// the leader's step.
func wavePhases(ctx context.Context, f *Fleet, o *operator, svc string, r *v1.Rollout, start time.Time) string {
	evs, err := o.op.ListEvents(ctx, &v1.ListEventsRequest{Service: svc, RolloutId: r.GetId()})
	if err != nil {
		return err.Error()
	}
	began, done := map[int32]time.Time{}, map[int32]time.Time{}
	for _, e := range evs.GetEvents() {
		switch e.GetKind() {
		case rollout.EventRolloutCreated:
			if _, ok := began[0]; !ok {
				began[0] = e.GetAt().AsTime()
			}
		case rollout.EventWaveStarted:
			began[e.GetWave()] = e.GetAt().AsTime()
		case rollout.EventWaveDone:
			done[e.GetWave()] = e.GetAt().AsTime()
		}
	}
	recv, healthy := f.Marks()
	var parts []string
	for w := int32(0); ; w++ {
		b, ok1 := began[w]
		d, ok2 := done[w]
		if !ok1 || !ok2 {
			break
		}
		var first, last, lastOK time.Time
		n := 0
		for _, t := range recv {
			if t.Before(b) || t.After(d) {
				continue
			}
			n++
			if first.IsZero() || t.Before(first) {
				first = t
			}
			if t.After(last) {
				last = t
			}
		}
		for _, t := range healthy {
			if !t.Before(b) && !t.After(d) && t.After(lastOK) {
				lastOK = t
			}
		}
		if n == 0 {
			parts = append(parts, fmt.Sprintf("wave %d: no set received", w))
			continue
		}
		parts = append(parts, fmt.Sprintf("wave %d: %d sets received +%s..+%s, last healthy sent +%s, done +%s", w, n,
			ms(first.Sub(start)), ms(last.Sub(start)), ms(lastOK.Sub(start)), ms(d.Sub(start))))
	}
	return strings.Join(parts, "; ")
}

// waveTimeline lists when each wave started and was done (from the
// coordinator's events; offsets from start, same clock).
func waveTimeline(ctx context.Context, o *operator, svc string, r *v1.Rollout, start time.Time) string {
	evs, err := o.op.ListEvents(ctx, &v1.ListEventsRequest{Service: svc, RolloutId: r.GetId()})
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, e := range evs.GetEvents() {
		switch e.GetKind() {
		case rollout.EventWaveStarted, rollout.EventWaveDone, rollout.EventRolloutSucceeded, rollout.EventRolloutFailed, rollout.EventRolloutCreated:
			w := ""
			if e.GetWave() >= 0 {
				w = fmt.Sprintf(" %d", e.GetWave())
			}
			parts = append(parts, fmt.Sprintf("%s%s +%s", strings.TrimPrefix(e.GetKind(), "rollout_"), w, ms(e.GetAt().AsTime().Sub(start))))
		}
	}
	return strings.Join(parts, ", ")
}

// failingRollout releases v3 with one host of the last wave failing its
// install, and times the way back to v2. The failing host is chosen from
// the plan computed the way the leader computes it (rollout.New is
// deterministic) and checked against the real rollout afterwards.
func failingRollout(ctx context.Context, f *Fleet, o *operator, svc string, res *scaleResult) error {
	hosts, err := o.op.ListHosts(ctx, &v1.ListHostsRequest{})
	if err != nil {
		return err
	}
	gs, err := o.op.GetService(ctx, &v1.GetServiceRequest{Name: svc})
	if err != nil {
		return err
	}
	var cands []rollout.Host
	for _, h := range hosts.GetHosts() {
		cands = append(cands, rollout.Host{ID: h.GetId(), Labels: h.GetLabels()})
	}
	plan := rollout.New("plan", gs.GetService(), "v3", cands, time.Now())
	waves := plan.GetWaves()
	if len(waves) < 2 {
		return fmt.Errorf("plan of %d wave(s): need a last wave after the canary", len(waves))
	}
	last := waves[len(waves)-1].GetHosts()
	victim := last[len(last)-1].GetHostId()
	var idx int
	if _, err := fmt.Sscanf(victim, DefaultHostPrefix+"%d", &idx); err != nil {
		return fmt.Errorf("host %s: %w", victim, err)
	}
	if err := f.FailNext(idx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	before := f.Stats().Failures
	start := time.Now()
	if _, err := o.release(ctx, svc, "v3"); err != nil {
		return err
	}
	if err := f.wait(ctx, func() bool { return f.failures.Load() > before }); err != nil {
		return fmt.Errorf("waiting for %s to fail: %w", victim, err)
	}
	failAt := f.Stats().LastFailure
	for failAt.IsZero() {
		sleep(ctx, time.Millisecond)
		failAt = f.Stats().LastFailure
	}
	res.rollbackFrom = failAt.Sub(start)
	if err := f.WaitAll(ctx, svc, "v2"); err != nil {
		return err
	}
	res.rollback = time.Since(failAt)
	r, err := o.waitRollout(ctx, svc, ended("v3"))
	if err != nil {
		return err
	}
	res.failReason = r.GetReason()
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(r.GetReason(), victim) ||
		!strings.Contains(r.GetReason(), fmt.Sprintf("wave %d", len(waves)-1)) {
		return fmt.Errorf("rollout to v3: %v %q, want FAILED in wave %d by %s", r.GetState(), r.GetReason(), len(waves)-1, victim)
	}
	if fa := r.GetFinishedAt(); fa != nil {
		res.failDetect = fa.AsTime().Sub(failAt)
	}
	if ra := r.GetRestoredAt(); ra != nil {
		res.notes = append(res.notes, fmt.Sprintf("restored_at - failing report: %s", ra.AsTime().Sub(failAt).Round(time.Millisecond)))
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func (r *scaleResult) rssSlope() float64 {
	return float64(r.rssN-r.rssBase) / float64(r.n) / 1024
}

func (r *scaleResult) print(w io.Writer) {
	fmt.Fprintf(w, "\n== %d hosts ==\n", r.n)
	fmt.Fprintf(w, "connect all hosts:                 %s\n", ms(r.connect))
	fmt.Fprintf(w, "initial deploy v1 (3 waves):       all reported %s, SUCCEEDED seen %s\n", ms(r.initial.allReported), ms(r.initial.succeeded))
	etcdCores := "in the sim's process"
	if r.etcdRolloutCPU > 0 {
		etcdCores = fmt.Sprintf("%.2f", r.etcdRolloutCPU)
	}
	fmt.Fprintf(w, "(a) rollout v1→v2 (3 waves):       all reported %s, SUCCEEDED seen %s (meanwhile coordinator %.2f cores, sim %.2f, etcd %s)\n",
		ms(r.rollout.allReported), ms(r.rollout.succeeded), r.rolloutCPU, r.simRolloutCPU, etcdCores)
	fmt.Fprintf(w, "    its timeline (coordinator):    %s\n", r.rollout.waves)
	fmt.Fprintf(w, "    its waves (simulator):         %s\n", r.rollout.phases)
	fmt.Fprintf(w, "    coordinator's etcd txns:       %d during the rollout, mean latency %.1f ms\n", r.txns, r.txnMean*1000)
	fmt.Fprintf(w, "(b) assignment delivery latency:   p50 %s, p90 %s, p99 %s, max %s over %d messages\n",
		r.latency.P50.Round(time.Microsecond), r.latency.P90.Round(time.Microsecond), r.latency.P99.Round(time.Microsecond), r.latency.Max.Round(time.Microsecond), r.latency.Count)
	fmt.Fprintf(w, "    to the hosts' sockets:         p50 %s, p90 %s, p99 %s, max %s over %d messages (the kernel's receive time: without the simulator's scheduling)\n",
		r.sockLatency.P50.Round(time.Microsecond), r.sockLatency.P90.Round(time.Microsecond), r.sockLatency.P99.Round(time.Microsecond), r.sockLatency.Max.Round(time.Microsecond), r.sockLatency.Count)
	fmt.Fprintf(w, "(c) coordinator VmRSS:             %.1f MiB with no agent, %.1f MiB with %d connected (%.1f KiB per agent), %.1f MiB after the first deploy: %.1f KiB per agent\n",
		float64(r.rssBase)/(1<<20), float64(r.rssConnected)/(1<<20), r.n, float64(r.rssConnected-r.rssBase)/float64(r.n)/1024, float64(r.rssN)/(1<<20), r.rssSlope())
	perAgent := func(a, b float64) float64 { return (b - a) / float64(r.n) / 1024 }
	fmt.Fprintf(w, "    coordinator Go memory:         per agent connected / after the first deploy: heap in use %.1f / %.1f KiB, goroutine stacks %.1f / %.1f KiB, goroutines %.2f / %.2f\n",
		perAgent(r.goBase.heap, r.goConnected.heap), perAgent(r.goBase.heap, r.goN.heap),
		perAgent(r.goBase.stack, r.goConnected.stack), perAgent(r.goBase.stack, r.goN.stack),
		(r.goConnected.goroutines-r.goBase.goroutines)/float64(r.n), (r.goN.goroutines-r.goBase.goroutines)/float64(r.n))
	fmt.Fprintf(w, "(d) coordinator CPU idle:          %.3f cores (the sim's process: %.3f cores)\n", r.idleCPU, r.simIdleCPU)
	fmt.Fprintf(w, "(f) last wave fails, roll back:    failing report %s after release create; rollout FAILED after %s; every host back on v2 after %s\n",
		ms(r.rollbackFrom), ms(r.failDetect), ms(r.rollback))
	fmt.Fprintf(w, "    rollout record at the end:     %d bytes\n", r.rolloutBytes)
	fmt.Fprintf(w, "(e) etcd writes by phase and kind (puts/deletes, value bytes; revisions = transactions, of which report transactions):\n")
	for _, ph := range r.writes {
		kinds := make([]string, 0, len(ph.counts))
		for k := range ph.counts {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		var parts []string
		total := 0
		for _, k := range kinds {
			c := ph.counts[k]
			total += c.Puts + c.Deletes
			parts = append(parts, fmt.Sprintf("%s %d/%d %s", k, c.Puts, c.Deletes, sizeStr(c.Bytes)))
		}
		fmt.Fprintf(w, "    %-52s %6d writes, %5d revisions (%d of reports): %s\n", ph.name, total, ph.revs, ph.reportTxns, strings.Join(parts, ", "))
	}
	for _, n := range r.notes {
		fmt.Fprintf(w, "    note: %s\n", n)
	}
}

func sizeStr(b int64) string {
	switch {
	case b >= 10<<20:
		return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
	case b >= 10<<10:
		return fmt.Sprintf("%.0f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

func printSummary(w io.Writer, rs []*scaleResult) {
	if len(rs) == 0 {
		return
	}
	fmt.Fprintf(w, "\n| hosts | rollout, 3 waves (all reported / SUCCEEDED) | delivery p50 / p99 (to the hosts' sockets) | RSS per agent | idle CPU | etcd writes per rollout | rollback after last-wave failure |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		writes := "?"
		for _, ph := range r.writes {
			if strings.HasPrefix(ph.name, "rollout v1") {
				total := 0
				for _, c := range ph.counts {
					total += c.Puts + c.Deletes
				}
				writes = fmt.Sprintf("%d (%.1f per host)", total, float64(total)/float64(r.n))
			}
		}
		fmt.Fprintf(w, "| %d | %s / %s | %s / %s (%s / %s) | %.1f KiB | %.3f cores | %s | %s |\n", r.n,
			ms(r.rollout.allReported), ms(r.rollout.succeeded),
			r.latency.P50.Round(time.Millisecond/10), r.latency.P99.Round(time.Millisecond/10),
			r.sockLatency.P50.Round(time.Millisecond/10), r.sockLatency.P99.Round(time.Millisecond/10),
			r.rssSlope(), r.idleCPU, writes, ms(r.rollback))
	}
}

// goMem is a coordinator's Go memory as its /metrics tells it (the
// Prometheus Go collector; heap in use includes garbage not yet collected).
type goMem struct{ heap, stack, goroutines float64 }

// scrapeGoMem reads goMem from the coordinator's /metrics; a failure is
// noted in res and gives zeros.
func scrapeGoMem(ctx context.Context, addr string, res *scaleResult) goMem {
	var m goMem
	err := scrapeMetrics(ctx, addr, func(name string, v float64) {
		switch name {
		case "go_memstats_heap_inuse_bytes":
			m.heap = v
		case "go_memstats_stack_inuse_bytes":
			m.stack = v
		case "go_goroutines":
			m.goroutines = v
		}
	})
	if err != nil {
		res.notes = append(res.notes, "metrics: "+err.Error())
	}
	return m
}

// scrapeMetrics calls f with each sample line's name (labels included) and
// value from the coordinator's /metrics.
func scrapeMetrics(ctx context.Context, addr string, f func(name string, v float64)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 2 || strings.HasPrefix(fs[0], "#") {
			continue
		}
		v, err := strconv.ParseFloat(fs[1], 64)
		if err != nil {
			continue
		}
		f(fs[0], v)
	}
	return sc.Err()
}

// etcdTxns scrapes the coordinator's count and total seconds of etcd
// transactions (fleetwave_coordinator_etcd_request_duration_seconds, op txn).
func etcdTxns(ctx context.Context, addr string) (count, sum float64, err error) {
	const name = "fleetwave_coordinator_etcd_request_duration_seconds"
	err = scrapeMetrics(ctx, addr, func(n string, v float64) {
		if !strings.Contains(n, `op="txn"`) {
			return
		}
		switch {
		case strings.HasPrefix(n, name+"_count"):
			count = v
		case strings.HasPrefix(n, name+"_sum"):
			sum = v
		}
	})
	return count, sum, err
}

// reportWriterCounts scrapes the coordinator's report transactions, reports
// written and reports coalesced (zeros from a coordinator without them).
func reportWriterCounts(ctx context.Context, addr string) ([3]float64, error) {
	var c [3]float64
	err := scrapeMetrics(ctx, addr, func(n string, v float64) {
		switch n {
		case "fleetwave_coordinator_report_txns_total":
			c[0] = v
		case "fleetwave_coordinator_reports_written_total":
			c[1] = v
		case "fleetwave_coordinator_reports_coalesced_total":
			c[2] = v
		}
	})
	return c, err
}
