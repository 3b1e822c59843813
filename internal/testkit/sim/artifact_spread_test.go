package sim

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleetwave/fleetwave/coordinator/rollout"
	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The artifact-spread harness (make bench). Skipped unless
// FLEETWAVE_SIM_ARTIFACT lists fleet sizes:
//
//	FLEETWAVE_SIM_ARTIFACT=1000,5000 go test -run '^TestArtifactSpread$' -v -timeout 60m ./internal/testkit/sim
//
// For each size and mode (FLEETWAVE_SIM_P2P lists them: off, without
// peer-to-peer; on, with it; stage, with it and rollout.stage_ahead: true;
// default off,on,stage), it starts the real coordinator binary on a fresh etcd, a simulated fleet
// whose installs move bytes (Config.Fetch) through the bandwidth model,
// rolls out v0 (a 1-byte artifact: hosts stage only while they run a
// release), then releases v1, an artifact of FLEETWAVE_SIM_ARTIFACT_MB (default 50) modeled
// megabytes and measures two times, both from release create (the
// CreateRelease call): until every host holds the artifact (fetched, for
// an install or a stage, size and sha256 checked), and until the rollout
// is SUCCEEDED; the
// coordinator's artifact egress (its metric, cross-checked with the sim's
// count), the bytes between hosts, the downloads peers refused and the
// most one host served; and the model's numbers (ArtifactSpread) for the same
// fleet. The rates are FLEETWAVE_SIM_DOWNLOAD_RATE, _UPLOAD_RATE,
// _COORDINATOR_RATE (modeled bytes/s, default 1 Gbit/s per host, 10 Gbit/s
// for the coordinator), FLEETWAVE_SIM_PEER_MAX_UPLOADS (8) and the byte
// scale FLEETWAVE_SIM_BYTE_SCALE (1000). FLEETWAVE_SIM_COORDINATOR,
// FLEETWAVE_SIM_PHASE_TIMEOUT and FLEETWAVE_SIM_OUT work as for TestScale.
// The staging columns are printed only when the coordinator sent a stage.
// The model's row is the mode's own (ArtifactSpread with Stage for stage).
func TestArtifactSpread(t *testing.T) {
	ns := envList(t, "FLEETWAVE_SIM_ARTIFACT", "", fleetSize(2))
	if len(ns) == 0 {
		t.Skip("set FLEETWAVE_SIM_ARTIFACT=1000,5000 to run the artifact-spread harness")
	}
	modes := envList(t, "FLEETWAVE_SIM_P2P", "off,on,stage", parseSpreadMode)
	sc := artifactConfig{
		mb:         envInt(t, "FLEETWAVE_SIM_ARTIFACT_MB", 50, 1, 1<<20),
		scale:      envInt(t, "FLEETWAVE_SIM_BYTE_SCALE", 1000, 1, MaxByteScale),
		down:       envInt(t, "FLEETWAVE_SIM_DOWNLOAD_RATE", DefaultHostRate, 1, MaxRate),
		up:         envInt(t, "FLEETWAVE_SIM_UPLOAD_RATE", DefaultHostRate, 1, MaxRate),
		coord:      envInt(t, "FLEETWAVE_SIM_COORDINATOR_RATE", DefaultCoordinatorRate, 1, MaxRate),
		maxUploads: int(envInt(t, "FLEETWAVE_SIM_PEER_MAX_UPLOADS", DefaultPeerMaxUploads, 1, MaxPeerMaxUploads)),
		minHealthy: time.Second,
		canary:     1,
		waves:      []uint32{2, 10, 50, 100},
	}
	if sc.mb < 1 || sc.scale < 1 || sc.mb*1_000_000/sc.scale < 1 {
		t.Fatalf("FLEETWAVE_SIM_ARTIFACT_MB %d, FLEETWAVE_SIM_BYTE_SCALE %d: want at least one real byte", sc.mb, sc.scale)
	}
	limit, err := RaiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	bin := coordinatorBinary(t)
	phaseTimeout = envDuration(t, "FLEETWAVE_SIM_PHASE_TIMEOUT", 15*time.Minute)
	out := harnessOut(t)
	sc.printHeader(out, numCPU())
	var rows []*artifactRow
	for _, n := range ns {
		if uint64(n+n/streamsPerDownloadConn)+200 > limit {
			t.Errorf("hosts=%d: open file limit %d is too low", n, limit)
			continue
		}
		for _, m := range modes {
			r, err := runArtifactSpread(t, bin, n, m, sc)
			if err != nil {
				t.Errorf("hosts=%d %s: %v", n, m, err)
				continue
			}
			ft := r.stats.FetchTime
			fmt.Fprintf(out, "hosts %d, %s: fetch time p50 %s, p90 %s, p99 %s, max %s; assignment delivery p99 %s; assignment sets received %d (%d assignments); waves %s\n", n, m,
				ft.P50.Round(time.Millisecond), ft.P90.Round(time.Millisecond), ft.P99.Round(time.Millisecond), ft.Max.Round(time.Millisecond),
				r.stats.Latency.P99.Round(time.Millisecond), r.responses, r.assignments, r.timeline)
			rows = append(rows, r)
		}
	}
	printArtifactSpread(out, rows)
}

// spreadMode is one row's mode: peer-to-peer, and staging ahead (with it).
type spreadMode struct{ p2p, stage bool }

func (m spreadMode) String() string {
	switch {
	case m.stage:
		return "p2p+stage"
	case m.p2p:
		return "p2p"
	}
	return "off"
}

type artifactConfig struct {
	mb, scale, down, up, coord int64
	maxUploads                 int
	minHealthy                 time.Duration
	canary                     int
	waves                      []uint32
}

func (sc artifactConfig) size() int64 { return sc.mb * 1_000_000 }

func (sc artifactConfig) spec(n int, m spreadMode) *v1.ServiceSpec {
	s := simSpec("web", uint32(sc.canary), sc.waves, uint32(n))
	s.MinHealthyTime = durationpb.New(sc.minHealthy)
	s.Rollout.StageAhead = m.stage
	return s
}

func (sc artifactConfig) printHeader(w io.Writer, cpus int) {
	fmt.Fprintf(w, "\nfleetwave artifact-spread harness: %d CPUs; artifact %d MB (modeled; %d real bytes at byte scale %d)\n",
		cpus, sc.mb, sc.size()/sc.scale, sc.scale)
	fmt.Fprintf(w, "rates (modeled): host download %s, host upload %s, coordinator %s; peer uploads at once %d; coordinator --artifact-sources 3 (default)\n",
		gbps(sc.down), gbps(sc.up), gbps(sc.coord), sc.maxUploads)
	fmt.Fprintf(w, "spec: canary %d, waves %v%% (cumulative), max_parallel = fleet, bake 0, min_healthy_time %s (the sim's check delay); install delay 0\n",
		sc.canary, sc.waves, sc.minHealthy)
	fmt.Fprintf(w, "modes: off (no peer-to-peer), p2p (peer-to-peer), p2p+stage (peer-to-peer and rollout.stage_ahead: true; staging: a tree, %d roots at a time from the origin, %d children per holder)\n",
		rollout.StageOrigin, rollout.StageFanout)
	fmt.Fprintf(w, "times: from release create to every host holding the artifact, and to the rollout SUCCEEDED\n")
}

func gbps(bytesPerSec int64) string { return fmt.Sprintf("%g Gbit/s", float64(bytesPerSec)*8/1e9) }

type artifactRow struct {
	n                int
	mode             spreadMode
	spread, done     time.Duration
	egressMetric     int64 // the coordinator's metric, times the scale
	stats            Stats
	model            ArtifactResult // the mode's model (Stage for p2p+stage)
	timeline         string
	staged, stageMsg uint64
	// ConnectResponses and assignments the hosts received during v1's
	// rollout (the coordinator re-sends a host's set when it changes).
	responses, assignments uint64
}

// runArtifactSpread measures one fleet size, with or without peer-to-peer.
func runArtifactSpread(t *testing.T, bin string, n int, m spreadMode, sc artifactConfig) (_ *artifactRow, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*phaseTimeout)
	defer cancel()
	dir := t.TempDir()
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w; coordinator warnings: %s", err, problems(filepath.Join(dir, "coordinator.log"), 5))
		}
	}()
	p, err := startCoordinatorProc(t, bin, dir, startEtcd(t), ports.Addr(t), n+n/streamsPerDownloadConn+10)
	if err != nil {
		return nil, err
	}
	defer p.stop()
	o, err := dialOperator(ctx, p.addr)
	if err != nil {
		return nil, err
	}
	defer o.cc.Close()
	if err := o.apply(ctx, sc.spec(n, m)); err != nil {
		return nil, err
	}
	cfg := Config{Coordinator: p.addr, Hosts: n, Seed: 1, SourceAddrs: max(1, n/500), CheckDelay: sc.minHealthy,
		Fetch: true, P2P: m.p2p, DownloadRate: sc.down, UploadRate: sc.up, CoordinatorRate: sc.coord,
		PeerMaxUploads: sc.maxUploads, ByteScale: sc.scale}
	f, err := Start(ctx, cfg, zerolog.Nop())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.WaitConnected(ctx, n); err != nil {
		return nil, err
	}
	// Hosts stage only while they run a release (an assignment to wait
	// with): every host first runs v0, a 1-byte artifact, then the
	// measurement is the rollout to v1.
	o.randomArtifact(ctx, t, 1)
	if err := runToSuccess(ctx, f, o, "v0"); err != nil {
		return nil, err
	}
	f.ResetTransfers()
	before := f.Stats()
	o.randomArtifact(ctx, t, int(sc.size()/sc.scale))
	egress0, err := scrapeCounter(ctx, p.metrics, "fleetwave_coordinator_artifact_egress_bytes_total")
	if err != nil {
		return nil, err
	}
	wctx, wcancel := context.WithTimeout(ctx, phaseTimeout)
	defer wcancel()
	start := time.Now()
	if _, err := o.release(wctx, "web", "v1"); err != nil {
		return nil, err
	}
	row := &artifactRow{n: n, mode: m}
	if err := f.WaitHolding(wctx, o.art.GetSha256()); err != nil {
		return nil, err
	}
	row.spread = time.Since(start)
	if err := f.WaitAll(wctx, "web", "v1"); err != nil {
		return nil, err
	}
	r, err := o.waitRollout(wctx, "web", ended("v1"))
	if err != nil {
		return nil, err
	}
	row.done = time.Since(start)
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		return nil, fmt.Errorf("rollout: %v %s", r.GetState(), r.GetReason())
	}
	row.timeline = waveTimeline(ctx, o, "web", r, start)
	egress1, err := scrapeCounter(ctx, p.metrics, "fleetwave_coordinator_artifact_egress_bytes_total")
	if err != nil {
		return nil, err
	}
	row.egressMetric = int64(egress1-egress0) * sc.scale
	row.stats = f.Stats()
	row.responses = row.stats.Responses - before.Responses
	row.assignments = row.stats.Assignments - before.Assignments
	row.staged, row.stageMsg = row.stats.Staged, row.stats.Stages
	if got := row.stats.CoordinatorBytes + row.stats.PeerBytes; got != int64(n)*sc.size() {
		return nil, fmt.Errorf("bytes moved: %d, want %d hosts x %d", got, n, sc.size())
	}
	mp := ArtifactParams{Hosts: n, Size: sc.size(), Down: float64(sc.down), Up: float64(sc.up), Coord: float64(sc.coord),
		PeerMaxUploads: sc.maxUploads, Origin: rollout.StageOrigin, FanOut: rollout.StageFanout, P2P: m.p2p, Stage: m.stage, Canary: sc.canary, Waves: sc.waves, WaveOverhead: sc.minHealthy}
	if row.model, err = ArtifactSpread(mp); err != nil {
		return nil, err
	}
	return row, nil
}

// runToSuccess releases version of web and waits for every host healthy
// on it and the rollout SUCCEEDED.
func runToSuccess(ctx context.Context, f *Fleet, o *operator, version string) error {
	wctx, cancel := context.WithTimeout(ctx, phaseTimeout)
	defer cancel()
	if _, err := o.release(wctx, "web", version); err != nil {
		return err
	}
	if err := f.WaitAll(wctx, "web", version); err != nil {
		return err
	}
	r, err := o.waitRollout(wctx, "web", ended(version))
	if err != nil {
		return err
	}
	if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		return fmt.Errorf("rollout to %s: %v %s", version, r.GetState(), r.GetReason())
	}
	return nil
}

func printArtifactSpread(w io.Writer, rows []*artifactRow) {
	if len(rows) == 0 {
		return
	}
	staging := false
	for _, r := range rows {
		staging = staging || r.stageMsg > 0
	}
	fmt.Fprintf(w, "\n| hosts | mode | release create → every host holds it: measured / model | release create → SUCCEEDED: measured / model | coordinator egress: metric / model | peer bytes | peer downloads refused | most uploads one host served (in all / at once) |")
	if staging {
		fmt.Fprintf(w, " stages received / hosts staged / model staging rounds |")
	}
	fmt.Fprintf(w, "\n|---|---|---|---|---|---|---|---|")
	if staging {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		fmt.Fprintf(w, "| %d | %s | %s / %s | %s / %s | %s / %s | %s | %d | %d / %d |", r.n, r.mode,
			secs(r.spread), secs(r.model.Spread), secs(r.done), secs(r.model.Done),
			egress(r), gb(r.model.Egress), gb(r.stats.PeerBytes), r.stats.PeerRefused, r.stats.MaxUploads, r.stats.MaxConcurrentUploads)
		if staging {
			rounds := "-"
			if r.mode.stage {
				rounds = strconv.Itoa(r.model.Rounds)
			}
			fmt.Fprintf(w, " %d / %d / %s |", r.stageMsg, r.staged, rounds)
		}
		fmt.Fprintln(w)
	}
}

// egress is the coordinator's metric, and the sim's count when they differ
// (a download that failed its checks or was cut off counts in the metric
// only).
func egress(r *artifactRow) string {
	if r.egressMetric == r.stats.CoordinatorBytes {
		return gb(r.egressMetric)
	}
	return fmt.Sprintf("%s (sim %s)", gb(r.egressMetric), gb(r.stats.CoordinatorBytes))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func gb(b int64) string { return fmt.Sprintf("%.1f GB", float64(b)/1e9) }

// scrapeCounter reads one unlabelled counter from a coordinator's /metrics.
func scrapeCounter(ctx context.Context, addr, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("scrape %s: %w", addr, err)
	}
	return 0, fmt.Errorf("scrape %s: no %s", addr, name)
}
