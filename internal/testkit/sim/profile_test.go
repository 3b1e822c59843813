package sim

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/fleetwave/fleetwave/coordinator"
	"github.com/fleetwave/fleetwave/internal/testkit/etcdtest"
	"github.com/fleetwave/fleetwave/internal/testkit/testcluster"
)

// TestProfileInProcess runs a coordinator and a simulated fleet in this
// process so the Go profilers see the coordinator (the binary has no pprof
// endpoint). Skipped unless FLEETWAVE_SIM_INPROCESS gives a fleet size
// (keep it under half the open file limit: both ends of every connection
// are in this process):
//
//	FLEETWAVE_SIM_INPROCESS=5000 FLEETWAVE_SIM_PROFILE=$(mktemp -d) \
//	  go test -run '^TestProfileInProcess$' -v ./internal/testkit/sim
//
// It writes, into FLEETWAVE_SIM_PROFILE, cpu.pprof (two rollouts) and
// heap-connected.pprof / heap-deployed.pprof (after a GC, with the fleet
// connected and after the deploys) with goroutine dumps beside them; the sim's own allocations are in them
// too, under package sim and the grpc client. FLEETWAVE_SIM_MEMPROFILERATE
// sets runtime.MemProfileRate (e.g. 4096, to see objects of a few hundred
// bytes per agent). Its etcd is embedded here
// with a large MaxTxnOps, as big steps put more events in one transaction
// than etcd's default 128 allows.
func TestProfileInProcess(t *testing.T) {
	n := int(envInt(t, "FLEETWAVE_SIM_INPROCESS", 0, 0, maxHarnessHosts))
	if n == 0 {
		t.Skip("set FLEETWAVE_SIM_INPROCESS=<hosts> (and FLEETWAVE_SIM_PROFILE=<dir>) to profile an in-process run")
	}
	dir := os.Getenv("FLEETWAVE_SIM_PROFILE")
	if dir == "" {
		dir = t.TempDir()
	}
	if r := int(envInt(t, "FLEETWAVE_SIM_MEMPROFILERATE", 0, 0, math.MaxInt32)); r > 0 {
		runtime.MemProfileRate = r // finer heap profiles (default 512 KiB: per-agent objects hide)
	}
	if _, err := RaiseFileLimit(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	endpoint := startEtcd(t)
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cctx, ccancel := context.WithCancel(ctx)
	cfg := coordinator.Config{Insecure: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), EtcdEndpoints: []string{endpoint},
		Ready: func(a string) { addrc <- a }}
	go func() { done <- coordinator.Run(cctx, cfg, zerolog.Nop()) }()
	defer func() {
		ccancel()
		<-done
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatalf("coordinator: %v", err)
	}
	o, err := dialOperator(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer o.cc.Close()
	if err := o.apply(ctx, simSpec("web", 1, []uint32{50, 100}, uint32(n))); err != nil {
		t.Fatal(err)
	}
	heap := func(name string) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t.Logf("%s: heap in use %.1f MiB, stacks %.1f MiB, goroutines %d", name,
			float64(ms.HeapInuse)/(1<<20), float64(ms.StackInuse)/(1<<20), runtime.NumGoroutine())
		f, err := os.Create(filepath.Join(dir, name+".pprof"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Fatal(err)
		}
		g, err := os.Create(filepath.Join(dir, "goroutines-"+name+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if err := pprof.Lookup("goroutine").WriteTo(g, 1); err != nil {
			t.Fatal(err)
		}
	}
	heap("heap-empty")
	fleet, err := Start(ctx, Config{Coordinator: addr, Hosts: n, Seed: 1, SourceAddrs: max(1, n/500)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	if err := fleet.WaitConnected(ctx, n); err != nil {
		t.Fatal(err)
	}
	heap("heap-connected")
	cpu, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"v1", "v2"} {
		tm, err := timedRollout(ctx, fleet, o, "web", v)
		if err != nil {
			pprof.StopCPUProfile()
			t.Fatal(err)
		}
		t.Logf("rollout to %s: all reported %s, SUCCEEDED seen %s", v, tm.allReported, tm.succeeded)
	}
	pprof.StopCPUProfile()
	heap("heap-deployed")
	t.Logf("profiles in %s", dir)
}

// startEtcd runs an etcd server in this process with room for big
// transactions and returns its client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	return etcdtest.Start(t, func(cfg *embed.Config) {
		cfg.MaxTxnOps = 1 << 20
		cfg.MaxRequestBytes = 16 << 20
	})
}

// startScaleEtcd is the scale harnesses' etcd: FLEETWAVE_SIM_ETCD=process
// (the default) runs it as a process of its own (testcluster's etcdnode,
// with the same room), as an operator runs etcd, and returns its pid too;
// =inprocess runs it in this process (startEtcd; pid 0), where it shares
// the Go runtime, its CPU and its collector with the thousands of
// simulated agents, as tables measured before 2026-12-06 did.
func startScaleEtcd(t *testing.T) (endpoint string, pid int) {
	t.Helper()
	switch v := os.Getenv("FLEETWAVE_SIM_ETCD"); v {
	case "", "process":
		c := testcluster.StartEtcdArgs(t, 1, "--max-txn-ops", "1048576", "--max-request-bytes", "16777216", "--log-level", "error")
		return c.Endpoint(0), c.Pid(0)
	case "inprocess":
		return startEtcd(t), 0
	default:
		t.Fatalf("FLEETWAVE_SIM_ETCD %q: want process or inprocess", v)
		return "", 0
	}
}
