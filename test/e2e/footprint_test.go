package e2e

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// footprintSpec is one of the services TestAgentFootprint runs: the demo
// app on a port of its own, checked over http every second, one wave.
const footprintSpec = `name: %s
selector: {role: web}
run:
  command: ["./demoapp", "--listen", "127.0.0.1:%d"]
  stop_grace: 5s
checks:
  - name: http
    http: {url: "http://127.0.0.1:%d/healthz"}
    interval: 1s
    timeout: 1s
min_healthy_time: 1s
healthy_deadline: 30s
rollout:
  no_canary: true
  waves: [100]
  progress_deadline: 2m
`

const (
	// footprintServices is how many services the measured agent runs.
	footprintServices = 5
	// footprintRounds is how many times each is rolled to a new release.
	footprintRounds = 40
	// footprintIdle is how long the agent's idle CPU is measured.
	footprintIdle = 30 * time.Second
)

// TestAgentFootprint is a measurement, not a check of sizes or times:
// `make bench` runs it (FLEETWAVE_BENCH=1). One real agent runs
// footprintServices demo services (checked every second), each rolled to
// a new release footprintRounds times (all at once each round); it prints
// the agent process's memory (RSS, its peak VmHWM), CPU, open files,
// threads and goroutines and the Go heap after start, after the first
// deploy, every 10 rounds, and its CPU over an idle window: whether the
// agent's own cost grows with the deploys a host lives through. It fails
// only when a rollout does not succeed.
func TestAgentFootprint(t *testing.T) {
	if os.Getenv("FLEETWAVE_BENCH") == "" {
		t.Skip("a benchmark: set FLEETWAVE_BENCH=1 (make bench runs it)")
	}
	e := newFleetEnv(t, 1)
	agent := e.fleet.Agents["host-1"]
	var rows []string
	sample := func(when string) footprint {
		fp := e.footprint(agent)
		rows = append(rows, fmt.Sprintf("| %s | %s |", when, fp))
		return fp
	}
	idleCPU := func() float64 {
		before, from := e.footprint(agent).cpu, time.Now()
		// Idle: nothing to wait on but time itself (the agent's own
		// timers and its services' checks run).
		<-time.After(footprintIdle)
		return (e.footprint(agent).cpu - before) / time.Since(from).Seconds()
	}
	sample("connected, no service")
	idleBare := idleCPU()
	names := make([]string, footprintServices)
	for i := range names {
		names[i] = fmt.Sprintf("svc%d", i+1)
		port := ports.Port(t)
		e.apply(names[i], fmt.Sprintf(footprintSpec, names[i], port, port))
	}
	var size int64
	round := func(r int) {
		version := fmt.Sprintf("v%d", r)
		art := e.artifact(version, nil)
		if fi, err := os.Stat(art); err == nil {
			size = fi.Size()
		}
		var wg sync.WaitGroup
		for _, name := range names {
			wg.Go(func() { e.fleet.CLI(e.ctx, "release", "create", name, "--version", version, "--artifact", art) })
		}
		wg.Wait()
		for _, name := range names {
			e.waitFor(2*time.Minute, name+" "+version+" rolled out", func() (bool, string) {
				r, err := testfleet.Rollout(e.ctx, e.fleet.Addr, name)
				if err != nil {
					return false, err.Error()
				}
				if r.GetToVersion() != version || r.GetFinishedAt() == nil {
					return false, r.GetToVersion() + " " + r.GetState().String()
				}
				if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
					t.Fatalf("rollout of %s %s: %s: %s", name, version, r.GetState(), r.GetReason())
				}
				return true, ""
			})
		}
	}
	round(1)
	sample(fmt.Sprintf("%d services deployed", footprintServices))
	for r := 2; r <= footprintRounds+1; r++ {
		round(r)
		if (r-1)%10 == 0 {
			sample(fmt.Sprintf("after %d rounds (%d deploys)", r-1, (r-1)*footprintServices))
		}
	}
	idle := idleCPU()
	sample(fmt.Sprintf("idle %s after the last round", footprintIdle))
	t.Logf("FOOTPRINT of one agent: %d services (demo app, http check every 1 s), each rolled %d times (%d deploys, artifact %.1f MiB)\n"+
		"| when | RSS / peak RSS (VmHWM) | Go heap in use / runtime total | goroutines / threads | open files | CPU since start |\n|---|---|---|---|---|---|\n%s\n"+
		"idle CPU over %s: %.2f%% of one core with no service, %.2f%% with %d services healthy",
		footprintServices, footprintRounds+1, (footprintRounds+1)*footprintServices, float64(size)/(1<<20),
		strings.Join(rows, "\n"), footprintIdle, idleBare*100, idle*100, footprintServices)
}

// footprint is what the agent process costs at one moment.
type footprint struct {
	rss, hwm, heap, sys, fds float64 // bytes, or a count for fds
	goroutines, threads      float64
	cpu                      float64 // seconds since the process started
}

func (f footprint) String() string {
	const mib = 1 << 20
	return fmt.Sprintf("%.1f / %.1f MiB | %.1f / %.1f MiB | %.0f / %.0f | %.0f | %.2f s",
		f.rss/mib, f.hwm/mib, f.heap/mib, f.sys/mib, f.goroutines, f.threads, f.fds, f.cpu)
}

// footprint reads the agent's own metrics (the Go and process collectors)
// and its peak RSS from /proc.
func (e *env) footprint(a *testfleet.Agent) footprint {
	e.t.Helper()
	m := func(name string) float64 { return e.metric(a.MetricsAddr, name) }
	return footprint{
		rss: m("process_resident_memory_bytes"), hwm: vmHWM(e.t, a.Pid()),
		heap: m("go_memstats_heap_inuse_bytes"), sys: m("go_memstats_sys_bytes"),
		fds: m("process_open_fds"), goroutines: m("go_goroutines"), threads: m("go_threads"),
		cpu: m("process_cpu_seconds_total"),
	}
}

// vmHWM is a process's peak resident set size in bytes (/proc/PID/status).
func vmHWM(t *testing.T, pid int) float64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				t.Fatalf("VmHWM: %q: %v", rest, err)
			}
			return kb * 1024
		}
	}
	t.Fatalf("/proc/%d/status: no VmHWM", pid)
	return 0
}
