package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/signing"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/proto"
)

// testKey is a generated signing key pair with its public key file.
type testKey struct {
	pub     ed25519.PublicKey
	priv    ed25519.PrivateKey
	id      string
	pubFile string
	seq     *uint64 // the last sequence sign used
}

func newTestKey(t *testing.T) testKey {
	t.Helper()
	pubPEM, privPEM, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := signing.ParsePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := signing.ParsePrivateKey(privPEM)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ci.pub")
	if err := os.WriteFile(path, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return testKey{pub: pub, priv: priv, id: signing.KeyID(pub), pubFile: path, seq: new(uint64)}
}

// sign returns a copy of asg whose release is signed by k with asg's spec
// and the next sequence of k, valid from signedAt to expiresAt.
func (k testKey) sign(t *testing.T, asg *v1.Assignment, signedAt, expiresAt time.Time) *v1.Assignment {
	t.Helper()
	asg = proto.Clone(asg).(*v1.Assignment)
	*k.seq++
	sm, err := signing.Sign(signing.Manifest(asg.GetRelease(), asg.GetSpec(), *k.seq, signedAt, expiresAt), k.priv)
	if err != nil {
		t.Fatal(err)
	}
	asg.Release.Signed = sm
	return asg
}

func TestVerifyRelease(t *testing.T) {
	k, other := newTestKey(t), newTestKey(t)
	trusted := trustedKeys{k.id: k.pub}
	now := time.Now()
	sha := strings.Repeat("ab", 32)
	base := testAssignment("2.0.0", 5, sha, 100, "")
	good := k.sign(t, base, now, now.Add(time.Hour))
	if err := verifyRelease(good, trusted, nil, now); err != nil {
		t.Fatalf("good: %v", err)
	}
	// A release without its service name is checked as the assigned one's.
	noSvc := proto.Clone(good).(*v1.Assignment)
	noSvc.Release.Service = ""
	if err := verifyRelease(noSvc, trusted, nil, now); err != nil {
		t.Fatalf("release without service: %v", err)
	}
	if noSvc.Release.Service != "" {
		t.Fatal("verifyRelease modified the assignment")
	}
	expired := k.sign(t, base, now.Add(-48*time.Hour), now.Add(-time.Hour))
	tampered := proto.Clone(good).(*v1.Assignment)
	tampered.Release.Artifact.Size = 99
	tests := []struct {
		name string
		asg  *v1.Assignment
		kind error
		want string
	}{
		{"unsigned", base, signing.ErrUnsigned, "release 2.0.0: unsigned: refused"},
		{"unknown key", other.sign(t, base, now, now.Add(time.Hour)), signing.ErrUnknownKey, "release 2.0.0: signature by unknown key " + other.id + ": refused"},
		{"expired", expired, signing.ErrExpired, "expired at"},
		{"size tampered", tampered, signing.ErrMismatch, "artifact size 100, the release 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verifyRelease(tt.asg, trusted, nil, now)
			if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %v containing %q", err, tt.kind, tt.want)
			}
		})
	}
	// An expired manifest of a release installed here (current or last
	// good) is accepted; of another release it is not.
	installed := []*v1.Assignment{nil, testAssignment("2.0.0", 3, sha, 100, "")}
	if err := verifyRelease(expired, trusted, installed, now); err != nil {
		t.Errorf("expired, installed: %v", err)
	}
	otherDigest := []*v1.Assignment{testAssignment("2.0.0", 3, strings.Repeat("cd", 32), 100, "")}
	if err := verifyRelease(expired, trusted, otherDigest, now); !errors.Is(err, signing.ErrExpired) {
		t.Errorf("expired, other digest installed: %v", err)
	}
	// Installed or not, a bad signature is refused.
	if err := verifyRelease(base, trusted, installed, now); !errors.Is(err, signing.ErrUnsigned) {
		t.Errorf("unsigned, installed: %v", err)
	}
}

func TestTrustedKeysConfig(t *testing.T) {
	cfg := Config{Insecure: true, Coordinators: []string{"127.0.0.1:1"}, HostID: "h", DataDir: "d", TrustedKeys: []string{"a.pub", " "}}
	if err := cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), "trusted_keys[1]: empty path") {
		t.Errorf("Validate: %v", err)
	}
	if keys, err := loadTrustedKeys(nil); keys != nil || err != nil {
		t.Errorf("no keys: %v %v", keys, err)
	}
	missing := filepath.Join(t.TempDir(), "nope.pub")
	if _, err := loadTrustedKeys([]string{missing}); err == nil || !strings.HasPrefix(err.Error(), "trusted_keys: ") || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing key file: %v", err)
	}
	cfg.TrustedKeys = []string{missing}
	if err := Run(context.Background(), cfg, testLogger(t)); err == nil || !strings.Contains(err.Error(), "trusted_keys") {
		t.Errorf("Run with a missing key file: %v", err)
	}
}

// TestAgentRefusesUnverifiedReleases runs an agent with a trusted key: an
// unsigned, foreign-signed, tampered, expired or mismatched release is
// refused before anything is fetched (reported FAILED naming the check, the
// running release untouched); a signed one installs; an older generation is
// refused, also after a restart.
func TestAgentRefusesUnverifiedReleases(t *testing.T) {
	k, other := newTestKey(t), newTestKey(t)
	fc := newFakeCoordinator(t)
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "v2": "2"})
	d1 := fc.addArtifact(v1Art)
	var v2Gets atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v2Gets.Add(1)
		w.Write(v2Art)
	}))
	defer hs.Close()
	d2 := fc.addArtifact(v2Art) // digest only: the agent fetches v2 from hs

	dataDir := t.TempDir()
	pidFile := filepath.Join(dataDir, "run", testSvc+".pid")
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: dataDir, TrustedKeys: []string{k.pubFile}} // not other's
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())

	now := time.Now()
	fc.assign(k.sign(t, testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""), now, now.Add(time.Hour)))
	fc.waitFor(t, "signed v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	v1PID := readPID(t, pidFile)

	v2 := testAssignment("2.0.0", 0, d2, int64(len(v2Art)), hs.URL+"/v2.tar.gz")
	at := func(gen int64, a *v1.Assignment) *v1.Assignment {
		a = proto.Clone(a).(*v1.Assignment)
		a.Generation = gen
		return a
	}
	badSig := k.sign(t, v2, now, now.Add(time.Hour))
	badSig.Release.Signed.Signature[0] ^= 0x80
	otherDigest := k.sign(t, v2, now, now.Add(time.Hour))
	otherDigest.Release.Artifact.Sha256 = d1 // a coordinator swapping the artifact
	otherURL := k.sign(t, v2, now, now.Add(time.Hour))
	otherURL.Release.Artifact.Url = "http://169.254.169.254/latest/meta-data" // ...or where it is fetched from
	refusals := []struct {
		name string
		asg  *v1.Assignment
		want string
	}{
		{"unsigned", v2, "release 2.0.0: unsigned: refused"},
		{"unknown key", other.sign(t, v2, now, now.Add(time.Hour)), "release 2.0.0: signature by unknown key " + other.id + ": refused"},
		{"bad signature", badSig, "signature by key " + k.id + " does not verify: refused"},
		{"expired", k.sign(t, v2, now.Add(-72*time.Hour), now.Add(-time.Hour)), "signed manifest expired at"},
		{"artifact swapped", otherDigest, "signed manifest has artifact sha256 " + d2 + ", the release " + d1},
		{"url swapped", otherURL, "signed manifest has artifact url " + hs.URL + "/v2.tar.gz, the release http://169.254.169.254/latest/meta-data"},
	}
	gen := int64(1)
	for _, r := range refusals {
		gen++
		fc.assign(at(gen, r.asg))
		fc.waitFor(t, r.name+" refused", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			last := lastReport(rs, testSvc)
			return reportIs(last, gen, v1.Phase_PHASE_FAILED, "1.0.0") && strings.Contains(last.GetReason(), r.want) &&
				last.GetLastGoodVersion() == "1.0.0"
		})
		if n := v2Gets.Load(); n != 0 {
			t.Fatalf("%s: v2 fetched %d times", r.name, n)
		}
		if _, err := os.Stat(filepath.Join(dataDir, "releases", testSvc, "2.0.0")); !os.IsNotExist(err) {
			t.Fatalf("%s: v2 staged: %v", r.name, err)
		}
		if got := currentLink(t, dataDir); got != "1.0.0" {
			t.Fatalf("%s: current -> %q", r.name, got)
		}
		if pid := readPID(t, pidFile); pid != v1PID || !alive(pid) {
			t.Fatalf("%s: v1 (pid %d) stopped or restarted: pid %d", r.name, v1PID, pid)
		}
	}

	// Correctly signed: installs.
	gen++
	good := gen
	fc.assign(at(good, k.sign(t, v2, now, now.Add(time.Hour))))
	fc.waitFor(t, "signed v2 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), good, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	if v2Gets.Load() == 0 {
		t.Fatal("v2 not fetched from its URL")
	}
	v2PID := readPID(t, pidFile)

	// A lower generation (a replayed, validly signed v1) is refused and
	// reported; nothing changes.
	replay := k.sign(t, testAssignment("1.0.0", good-1, d1, int64(len(v1Art)), ""), now, now.Add(time.Hour))
	fc.assign(replay)
	wantReplay := "refused assignment: generation " + strconv.FormatInt(good-1, 10) + " (release 1.0.0) is older than the accepted generation " + strconv.FormatInt(good, 10)
	fc.waitFor(t, "replay refused", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		last := lastReport(rs, testSvc)
		return reportIs(last, good, v1.Phase_PHASE_HEALTHY, "2.0.0") && strings.Contains(last.GetReason(), wantReplay)
	})
	if pid := readPID(t, pidFile); pid != v2PID || currentLink(t, dataDir) != "2.0.0" {
		t.Fatalf("replay changed the service: pid %d -> %d, current %s", v2PID, pid, currentLink(t, dataDir))
	}

	// After a restart the accepted generation still holds (state file).
	cancel()
	waitDone(t, done)
	fc.mu.Lock()
	nReports := len(fc.reports)
	fc.mu.Unlock()
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx2, cfg, testOptions())
	fc.waitFor(t, "replay refused after restart", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		for _, r := range rs[nReports:] {
			if r.GetService() == testSvc && r.GetGeneration() == good && strings.Contains(r.GetReason(), wantReplay) {
				return true
			}
		}
		return false
	})
	fc.waitFor(t, "v2 healthy after restart", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs[nReports:], testSvc), good, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	if got := currentLink(t, dataDir); got != "2.0.0" {
		t.Fatalf("current -> %q after restart", got)
	}
	cancel2()
	waitDone(t, done2)
}
