package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/signing"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestAgentUpgrade(t *testing.T) {
	f := &fake{rollout: &v1.Rollout{Id: "000001", Service: spec.AgentService, FromVersion: "", ToVersion: "v0.2.0", State: v1.RolloutState_ROLLOUT_STATE_PROGRESSING}}
	addr := serve(t, f)
	artifact := filepath.Join(t.TempDir(), "fleetwave-agent.tar.gz")
	if err := os.WriteFile(artifact, []byte("not really a tarball"), 0o644); err != nil {
		t.Fatal(err)
	}
	prefix, keyID := generateKeys(t)
	code, stdout, stderr := runCLI(t, "--coordinator", addr, "agent", "upgrade", "--version", "v0.2.0", "--artifact", artifact,
		"--canary", "1", "--waves", "50,100", "--max-parallel", "2", "--max-failures", "1", "--bake", "3s", "--progress-deadline", "2m",
		"--sign", prefix+".key")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "release fleetwave-agent v0.2.0 created") || !strings.Contains(stdout, "signed by key "+keyID) {
		t.Fatalf("stdout: %s", stdout)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.upgrades) != 1 {
		t.Fatalf("%d upgrade calls", len(f.upgrades))
	}
	req := f.upgrades[0]
	pol := req.GetPolicy()
	if req.GetRelease().GetService() != spec.AgentService || req.GetRelease().GetVersion() != "v0.2.0" || req.GetRelease().GetArtifact().GetSize() != 20 ||
		pol.GetCanary() != 1 || len(pol.GetWaves()) != 2 || pol.GetWaves()[0] != 50 || pol.GetMaxParallel() != 2 || pol.GetMaxFailures() != 1 ||
		pol.GetBake().AsDuration() != 3*time.Second || pol.GetProgressDeadline().AsDuration() != 2*time.Minute {
		t.Fatalf("request %v", req)
	}
	// Signed for the reserved service and the version: a service's release
	// signature cannot stand in for it.
	m := signing.ParseManifest(req.GetRelease())
	if m.GetService() != spec.AgentService || m.GetVersion() != "v0.2.0" || m.GetSequence() != 1 || m.GetSpecSha256() != signing.SpecDigest(spec.AgentSpec(nil)) {
		t.Fatalf("manifest %v", m)
	}
}

func TestAgentUpgradeBadFlags(t *testing.T) {
	f := &fake{}
	addr := serve(t, f)
	artifact := filepath.Join(t.TempDir(), "a.tar.gz")
	if err := os.WriteFile(artifact, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--coordinator", addr, "agent", "upgrade", "--version", "v0.2.0", "--artifact", artifact}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--coordinator", addr, "agent", "upgrade", "--version", "v0.2.0"}, "--artifact FILE is required"},
		{[]string{"--coordinator", addr, "agent", "upgrade", "--artifact", artifact}, `"version" not set`},
		{append(base[:len(base):len(base)], "--waves", "50,40"), "rollout.waves[1]: 40"},
		{append(base[:len(base):len(base)], "--waves", "150"), "invalid --waves 150"},
		{append(base[:len(base):len(base)], "--max-parallel", "0"), "invalid --max-parallel 0"},
		{append(base[:len(base):len(base)], "--canary", "2", "--no-canary"), "no_canary"},
		{append(base[:len(base):len(base)], "--sequence", "3"), "--expires, --sequence and --trusted-keys need --sign"},
		{append(base[:len(base):len(base)], "--progress-deadline", "0s"), "invalid --progress-deadline"},
	} {
		code, _, stderr := runCLI(t, tt.args...)
		if code == 0 || !strings.Contains(stderr, tt.want) {
			t.Errorf("%v: exit %d, stderr %q, want %q", tt.args[2:], code, stderr, tt.want)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.upgrades) != 0 || len(f.uploads) != 0 {
		t.Fatalf("bad flags called the coordinator: %d upgrades, %d uploads", len(f.upgrades), len(f.uploads))
	}
}
