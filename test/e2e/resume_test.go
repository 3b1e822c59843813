package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/fleetwave/fleetwave/internal/testkit/ports"
)

// slowArtifact serves one artifact over HTTP (ranges honoured, by
// http.ServeContent) at a bounded rate, and records what it was asked and
// how many bytes it sent.
type slowArtifact struct {
	data  []byte
	limit *rate.Limiter

	mu     sync.Mutex
	ranges []string
	sent   atomic.Int64
}

const slowChunk = 32 << 10

type slowWriter struct {
	http.ResponseWriter
	ctx context.Context
	s   *slowArtifact
}

func (w slowWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), slowChunk)
		if err := w.s.limit.WaitN(w.ctx, n); err != nil {
			return written, err
		}
		m, err := w.ResponseWriter.Write(p[:n])
		written += m
		w.s.sent.Add(int64(m))
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (s *slowArtifact) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	s.mu.Unlock()
	http.ServeContent(slowWriter{ResponseWriter: w, ctx: r.Context(), s: s}, r, "artifact.tar.gz", time.Time{}, bytes.NewReader(s.data))
}

func (s *slowArtifact) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...)
}

// TestAgentRestartResumesDownload: an agent killed (-9) in the middle of a
// slow artifact download from the release's URL resumes it when it starts
// again (a Range request from the bytes it kept), so the server sends less
// than twice the artifact in all, and the release it installs is the
// verified one.
func TestAgentRestartResumesDownload(t *testing.T) {
	e := newEnv(t, 1, "web", "0s")
	noise := make([]byte, 6<<20) // incompressible: the artifact is about 10 MB
	if _, err := rand.Read(noise); err != nil {
		t.Fatal(err)
	}
	path := e.artifact("v1", map[string]string{"noise": string(noise)})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(data))
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	// About 4 s for the whole artifact: the agent is killed a third of
	// the way in, whatever the machine's speed.
	srv := &slowArtifact{data: data, limit: rate.NewLimiter(rate.Limit(size/4), slowChunk)}
	lis, err := net.Listen("tcp", ports.Addr(t))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(lis)
	t.Cleanup(func() { hs.Close() })

	e.cli(0, "release", "create", "web", "--version", "v1", "--url", "http://"+lis.Addr().String()+"/artifact.tar.gz",
		"--sha256", digest, "--size", strconv.FormatInt(size, 10))

	a := e.fleet.Agents["host-1"]
	partial := filepath.Join(a.DataDir, "partial", digest)
	e.waitFor(2*time.Minute, "a third of the artifact on the agent's disk", func() (bool, string) {
		fi, err := os.Stat(partial)
		if err != nil {
			return false, err.Error()
		}
		return fi.Size() >= size/3, fmt.Sprintf("%d of %d bytes", fi.Size(), size)
	})
	a.Kill9()
	fi, err := os.Stat(partial)
	if err != nil {
		t.Fatalf("the partial download is gone after kill -9: %v", err)
	}
	kept := fi.Size()
	if kept >= size {
		t.Fatalf("the download ended (%d of %d bytes) before the agent was killed", kept, size)
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("rollout of v1: watch exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")

	if sent := srv.sent.Load(); sent >= 2*size {
		t.Errorf("the server sent %d bytes for a %d-byte artifact: the restart started again at byte 0", sent, size)
	} else {
		t.Logf("the server sent %d bytes for a %d-byte artifact (%d kept at the kill)", sent, size, kept)
	}
	reqs := srv.requests()
	if len(reqs) != 2 || reqs[0] != "" || !strings.HasPrefix(reqs[1], "bytes=") || reqs[1] == "bytes=0-" {
		t.Errorf("requests with Range %q, want one whole, then one from the bytes kept", reqs)
	}
	if off, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(reqs[len(reqs)-1], "bytes="), "-"), 10, 64); off < kept {
		t.Errorf("resumed at byte %d, fewer than the %d kept", off, kept)
	}
	if n := e.metric(a.MetricsAddr, "fleetwave_agent_artifact_resumed_bytes_total"); n < float64(kept) {
		t.Errorf("fleetwave_agent_artifact_resumed_bytes_total %v, want at least the %d bytes kept", n, kept)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Errorf("the partial download stays after the install: %v", err)
	}
}

// TestAgentRestartResumesPeerDownload: the same from a peer over mutual
// TLS: the wave's host, fetching the canary's copy (its uploads slowed by
// --peer-upload-rate), is killed (-9) a third of the way in; restarted,
// it asks the canary for the rest (the Download offset), so the canary and
// the coordinator send it less than twice the artifact in all.
func TestAgentRestartResumesPeerDownload(t *testing.T) {
	// About 3 s per copy of the demo artifact (a few MB) from the canary.
	e := newP2PEnv(t, 2, "--peer-upload-rate", strconv.Itoa(2<<20))
	size, digest, canary := e.startP2PRelease("v1")
	egress := func() float64 {
		return e.metric(e.fleet.MetricsAddr, "fleetwave_coordinator_artifact_egress_bytes_total")
	}
	canaryCopy := egress()
	a := e.fleet.Agents[e.waveHosts(1)[0]]
	partial := filepath.Join(a.DataDir, "partial", digest)
	e.cli(0, "rollout", "approve", "web", "--wave", "1")
	e.waitFor(2*time.Minute, "a third of the artifact on the wave host's disk", func() (bool, string) {
		fi, err := os.Stat(partial)
		if err != nil {
			return false, err.Error()
		}
		return fi.Size() >= size/3, fmt.Sprintf("%d of %d bytes", fi.Size(), size)
	})
	a.Kill9()
	fi, err := os.Stat(partial)
	if err != nil {
		t.Fatalf("the partial download is gone after kill -9: %v", err)
	}
	kept := fi.Size()
	if kept >= size {
		t.Fatalf("the download ended (%d of %d bytes) before the agent was killed", kept, size)
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	if code := e.fleet.CLI(e.ctx, "rollout", "watch", "web").Code; code != 0 {
		t.Fatalf("v1: exit %d: %v", code, e.rollout("web"))
	}
	e.allOn("v1")
	fromCanary := e.metric(e.fleet.Agents[canary].MetricsAddr, "fleetwave_agent_peer_upload_bytes_total")
	fromCoordinator := egress() - canaryCopy
	if total := fromCanary + fromCoordinator; total >= 2*float64(size) {
		t.Errorf("%s was sent %.0f bytes (%.0f by the canary, %.0f by the coordinator) for a %d-byte artifact: the restart started again at byte 0",
			a.ID, total, fromCanary, fromCoordinator, size)
	} else {
		t.Logf("%s was sent %.0f bytes (%.0f by the canary, %.0f by the coordinator) for a %d-byte artifact (%d kept at the kill)",
			a.ID, total, fromCanary, fromCoordinator, size, kept)
	}
	if n := e.metric(a.MetricsAddr, "fleetwave_agent_artifact_resumed_bytes_total"); n < float64(kept) {
		t.Errorf("fleetwave_agent_artifact_resumed_bytes_total %v, want at least the %d bytes kept", n, kept)
	}
	if _, err := os.Stat(partial); !os.IsNotExist(err) {
		t.Errorf("the partial download stays after the install: %v", err)
	}
}
