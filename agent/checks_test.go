package agent

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/probe"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// startingProber fails until its process "answers" (answersAt after the
// start, on synctest's clock), then passes; it records when it ran.
type startingProber struct {
	start     time.Time
	answersAt time.Duration
	ran       []time.Duration
}

func (p *startingProber) Name() string { return "http" }

func (p *startingProber) Probe(context.Context) probe.Result {
	at := time.Since(p.start)
	p.ran = append(p.ran, at)
	return probe.Result{Name: "http", OK: at >= p.answersAt, Detail: "connection refused"}
}

// TestChecksRetrySoonerUntilTheyPass: the first check runs as the checks
// begin; until it passes a failing check runs again after 100 ms, 200 ms,
// 400 ms ... (lifecycle.ProbeDelay), not a whole interval later; once it
// passed it runs on its interval. synctest's clock: the times are exact.
func TestChecksRetrySoonerUntilTheyPass(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := &agent{events: make(chan any, 64), stopping: make(chan struct{})}
		p := &startingProber{start: time.Now(), answersAt: 650 * time.Millisecond}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.runChecks(ctx, "web", 1, []prober{{p: p, interval: time.Second, timeout: time.Second}})
		}()
		var passedAt time.Duration
		for passedAt == 0 {
			ev := (<-a.events).(checksEv)
			if ev.results[0].OK {
				passedAt = ev.at.Sub(p.start)
			}
		}
		// Two more rounds on the interval.
		<-a.events
		<-a.events
		cancel()
		<-done
		want := []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, 700 * time.Millisecond,
			1700 * time.Millisecond, 2700 * time.Millisecond}
		if len(p.ran) != len(want) {
			t.Fatalf("probes ran at %v, want %v", p.ran, want)
		}
		for i := range want {
			if p.ran[i] != want[i] {
				t.Fatalf("probes ran at %v, want %v", p.ran, want)
			}
		}
		if passedAt != 700*time.Millisecond {
			t.Fatalf("first pass reported at %v, want 700ms", passedAt)
		}
	})
}

// TestHealthyAtWithoutTicksOrChecks: the agent wakes up at the moment the
// checks have passed for min_healthy_time (lifecycle.Machine.HealthyAt). With
// no periodic tick and no check result due for an hour after the first
// pass, only that wake-up can make the release HEALTHY before the failure
// deadline.
func TestHealthyAtWithoutTicksOrChecks(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	digest := fc.addArtifact(art)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir, AgentVersion: "test"}
	opts := testOptions()
	opts.tick = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, opts)
	a := testAssignment("1.0.0", 1, digest, int64(len(art)), "")
	a.Spec.Checks[0].Interval = durationpb.New(time.Hour)
	fc.assign(a)
	fc.waitFor(t, "v1 healthy", 30*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	cancel()
	waitDone(t, done)
}

// TestCheckDetailBounded: a service answers its http check with a status
// line of 5,000 bytes, which net/http quotes whole in its error. Before,
// the check's detail carried it into every report and Hello: the
// coordinator refuses a check detail over 1,024 bytes (a report is
// ignored, a Hello refused), so the service cut its host off from every
// coordinator, stopping every other service's deploys there. Now a
// report's check names and details are cut to lifecycle.MaxCheckDetail.
func TestCheckDetailBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = c.Read(make([]byte, 4096))
				_, _ = fmt.Fprintf(c, "HTTP/1.1 %s OK\r\n\r\n", strings.Repeat("9", 5000))
			}()
		}
	}()
	fc := newFakeCoordinator(t)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	a := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	a.Spec.Checks = []*v1.Check{{Name: "health", Kind: &v1.Check_Http{Http: &v1.HttpCheck{Url: "http://" + ln.Addr().String() + "/"}},
		Interval: durationpb.New(100 * time.Millisecond)}}
	fc.assign(a)
	var detail string
	fc.waitFor(t, "the http check failing", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		for _, c := range lastReport(rs, testSvc).GetChecks() {
			if c.GetName() == "health" && strings.Contains(c.GetDetail(), "malformed") {
				detail = c.GetDetail()
				return true
			}
		}
		return false
	})
	if len(detail) > lifecycle.MaxCheckDetail || !strings.Contains(detail, "GET http://") {
		t.Fatalf("check detail of %d bytes (at most %d, naming the check's URL): %.200s", len(detail), lifecycle.MaxCheckDetail, detail)
	}
}

// TestCheckOutputShownPrintable: an exec check's last line of output (the
// release's ./check.sh, which a service's user may rewrite) went into the
// check's detail and the report's reason as it was, escape sequences
// included, and `fleetwave rollout status` prints reasons to operators'
// terminals (a title, a cleared screen, OSC 52 writing their clipboard).
// Now control characters in check results are shown as spaces, as in a
// hook's output.
func TestCheckOutputShownPrintable(t *testing.T) {
	fc := newFakeCoordinator(t)
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAgent(t, ctx, cfg, testOptions())
	t.Cleanup(func() {
		cancel()
		waitDone(t, done)
	})
	check := "#!/bin/sh\nprintf 'bad \\033]52;c;Y3VybCBldmlsfHNo\\007\\033[2J\\302\\233 0m end\\n'\nexit 1\n"
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": check})
	a := testAssignment("1.0.0", 1, fc.addArtifact(art), int64(len(art)), "")
	a.Spec.HealthyDeadline = durationpb.New(time.Second)
	fc.assign(a)
	var texts []string
	fc.waitFor(t, "the check failing, then the release", time.Minute, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		texts = texts[:0]
		failed := false
		for _, r := range rs {
			texts = append(texts, r.GetReason())
			for _, c := range r.GetChecks() {
				texts = append(texts, c.GetName(), c.GetDetail())
				failed = failed || strings.Contains(c.GetDetail(), " end")
			}
		}
		last := lastReport(rs, testSvc)
		return failed && last.GetGeneration() == 1 && strings.Contains(last.GetReason(), " end")
	})
	for _, s := range texts {
		for _, r := range s {
			if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				t.Fatalf("control character %U in a report: %q", r, s)
			}
		}
	}
}
