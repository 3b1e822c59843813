package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// leadTimeSpec is the policy of the Nomad comparison (issue 16): no
// canary, max_parallel 2 over 6 hosts (three batches), min_healthy_time 1s,
// an http check every 1 s; python's http.server serves the release
// directory. stage_ahead: hosts waiting for their batch fetch and unpack
// the release meanwhile.
const leadTimeSpec = `name: %s
selector: {role: web}
run:
  command: [%q, "-m", "http.server", "--bind", "127.0.0.1", "${host.label.port}"]
checks:
  - name: http
    http: {url: "http://127.0.0.1:${host.label.port}/"}
    interval: 1s
    timeout: 1s
min_healthy_time: 1s
healthy_deadline: 30s
rollout:
  no_canary: true
  waves: [100]
  max_parallel: 2
  progress_deadline: 2m
  stage_ahead: true
`

// leadTimeRounds is how many updates TestLeadTimeSmallFleet times.
const leadTimeRounds = 3

// TestLeadTimeSmallFleet is a measurement, not a check of wall-clock time:
// `make bench` runs it (FLEETWAVE_BENCH=1) and it prints, for a fleet and
// policy like the Nomad rolling update of issue 16, the time from `release
// create` to the rollout SUCCEEDED, and where each batch's time went. It
// fails only when a rollout does not succeed.
func TestLeadTimeSmallFleet(t *testing.T) {
	if os.Getenv("FLEETWAVE_BENCH") == "" {
		t.Skip("a benchmark: set FLEETWAVE_BENCH=1 (make bench runs it)")
	}
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed: the small-fleet lead time deploys python's http.server")
	}
	// The agent runs the command without a shell or PATH lookups of
	// wrappers (pyenv's shims are scripts that need their environment):
	// run the interpreter itself.
	out, err := exec.Command(python, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Skipf("python3 -c sys.executable: %v", err)
	}
	python = strings.TrimSpace(string(out))
	e := newFleetEnv(t, 6)
	e.apply("web", fmt.Sprintf(leadTimeSpec, "web", python))
	var totals, starts []time.Duration
	for i := range leadTimeRounds + 1 {
		version := fmt.Sprintf("v%d", i+1)
		art := filepath.Join(e.dir, "site-"+version+".tar.gz")
		if err := siteArtifact(art, version); err != nil {
			t.Fatal(err)
		}
		// The service's own start time now, on this machine as loaded as
		// it is: what no agent can save (a host's part is at least this
		// plus min_healthy_time).
		pyStart := serviceStart(t, python, e.dir)
		start := time.Now()
		e.cli(0, "release", "create", "web", "--version", version, "--artifact", art)
		var r *v1.Rollout
		e.waitFor(2*time.Minute, "rollout of "+version+" ends", func() (bool, string) {
			var err error
			r, err = testfleet.Rollout(e.ctx, e.fleet.Addr, "web")
			if err != nil {
				return false, err.Error()
			}
			if r.GetToVersion() != version {
				return false, "rollout of " + r.GetToVersion()
			}
			return r.GetFinishedAt() != nil, r.GetState().String()
		})
		if r.GetState() != v1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			t.Fatalf("rollout of %s: %s: %s", version, r.GetState(), r.GetReason())
		}
		total := r.GetFinishedAt().AsTime().Sub(start)
		kind := "update"
		if i == 0 {
			kind = "first deploy (not counted)"
		} else {
			totals = append(totals, total)
			starts = append(starts, pyStart)
		}
		t.Logf("lead time %s (%s): release create → SUCCEEDED %.2f s (python http.server starts in %.2f s now)\n%s",
			version, kind, total.Seconds(), pyStart.Seconds(), batches(r, start))
	}
	slices.Sort(totals)
	slices.Sort(starts)
	t.Logf("LEADTIME small fleet (6 hosts, no canary, max_parallel 2, min_healthy_time 1s, http check every 1s): "+
		"update release create → SUCCEEDED median %.2f s, min %.2f s, max %.2f s over %d updates "+
		"(python http.server's own start meanwhile: median %.2f s; Nomad 2.0.6: 15.4-15.6 s; floor 3 s)",
		totals[len(totals)/2].Seconds(), totals[0].Seconds(), totals[len(totals)-1].Seconds(), len(totals),
		starts[len(starts)/2].Seconds())
}

// batches describes a rollout's hosts in the order they were assigned:
// when each was assigned and became healthy, relative to start.
func batches(r *v1.Rollout, start time.Time) string {
	var hosts []*v1.HostProgress
	for _, w := range r.GetWaves() {
		hosts = append(hosts, w.GetHosts()...)
	}
	slices.SortFunc(hosts, func(a, b *v1.HostProgress) int {
		return a.GetStartedAt().AsTime().Compare(b.GetStartedAt().AsTime())
	})
	var b strings.Builder
	fmt.Fprintf(&b, "  rollout created %+.3f s\n", r.GetCreatedAt().AsTime().Sub(start).Seconds())
	for _, h := range hosts {
		s, d := h.GetStartedAt().AsTime(), h.GetDoneAt().AsTime()
		fmt.Fprintf(&b, "  %-7s assigned %+.3f s  healthy %+.3f s  (%.3f s)\n", h.GetHostId(),
			s.Sub(start).Seconds(), d.Sub(start).Seconds(), d.Sub(s).Seconds())
	}
	return b.String()
}

// siteArtifact writes a release of a static site for python's http.server:
// an index.html naming the version.
func siteArtifact(path, version string) error {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	body := []byte("<html><body>" + version + "</body></html>\n")
	if err := tw.WriteHeader(&tar.Header{Name: "index.html", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if _, err := tw.Write(body); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// serviceStart starts python's http.server in dir outside any agent and
// returns how long it took to answer its first request (the service's own
// start time on this machine now).
func serviceStart(t *testing.T, python, dir string) time.Duration {
	t.Helper()
	port, err := ports.Take()
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	cmd := exec.Command(python, "-m", "http.server", "--bind", "127.0.0.1", fmt.Sprint(port))
	cmd.Dir = dir
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(time.Minute) // a failure deadline, not a bound on the figure
	for {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			return time.Since(start)
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("python http.server on port %d did not answer within a minute", port)
		}
	}
}
