package gossip

import (
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestGenerateAndLoadKey(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(k)
	if err != nil || len(raw) != 32 {
		t.Fatalf("GenerateKey gave %q (%d bytes, %v)", k, len(raw), err)
	}
	k2, _ := GenerateKey()
	if k == k2 {
		t.Fatal("two generated keys are equal")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "ok.key")
	if err := os.WriteFile(p, []byte("  \n"+k+"\r\n\t"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadKey(p)
	if err != nil || string(got) != string(raw) {
		t.Fatalf("LoadKey = %x, %v; want %x", got, err, raw)
	}
	for _, n := range []int{16, 24} {
		p := filepath.Join(dir, "short.key")
		os.WriteFile(p, []byte(base64.RawStdEncoding.EncodeToString(make([]byte, n))), 0o600)
		if got, err := LoadKey(p); err != nil || len(got) != n {
			t.Errorf("%d-byte key (unpadded): %d bytes, %v", n, len(got), err)
		}
	}
}

func TestLoadKeyErrorsNameThePath(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		path    string
		want    string
		invalid bool
	}{
		{filepath.Join(dir, "missing.key"), "no such file", false},
		{write("empty.key", " \n"), "empty", true},
		{write("notb64.key", "this is not base64!!"), "not base64", true},
		{write("short.key", base64.StdEncoding.EncodeToString(make([]byte, 20))), "key is 20 bytes, want 16, 24 or 32", true},
		{write("long.key", base64.StdEncoding.EncodeToString(make([]byte, 64))), "key is 64 bytes", true},
		{write("huge.key", strings.Repeat("A", 5000)), "larger than", true},
	}
	for _, tc := range cases {
		_, err := LoadKey(tc.path)
		if err == nil {
			t.Errorf("%s: no error", tc.path)
			continue
		}
		if !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q should name the path and say %q", tc.path, err, tc.want)
		}
		if errors.Is(err, ErrInvalidKey) != tc.invalid {
			t.Errorf("%s: errors.Is(ErrInvalidKey) = %v", tc.path, !tc.invalid)
		}
	}
	if _, err := LoadKey(filepath.Join(dir, "missing.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key file: %v is not fs.ErrNotExist", err)
	}
}

func TestParseLine(t *testing.T) {
	cases := []struct {
		in    string
		level zerolog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4:5", zerolog.DebugLevel, "Stream connection from=1.2.3.4:5"},
		{"[INFO] memberlist: Suspect x has failed, no acks received", zerolog.InfoLevel, "Suspect x has failed, no acks received"},
		{"[WARN] memberlist: Refuting a suspect message (from: a)", zerolog.WarnLevel, "Refuting a suspect message (from: a)"},
		{"[ERR] memberlist: Decrypt packet failed", zerolog.ErrorLevel, "Decrypt packet failed"},
		{"[ERROR] memberlist: Failed to compress payload", zerolog.ErrorLevel, "Failed to compress payload"},
		{"[ERR] Failed to shutdown transport: x", zerolog.ErrorLevel, "Failed to shutdown transport: x"},
		{"Err: Could not set the deadline: x", zerolog.ErrorLevel, "Could not set the deadline: x"},
		{"no level at all", zerolog.InfoLevel, "no level at all"},
		{"[", zerolog.InfoLevel, "["},
	}
	for _, tc := range cases {
		level, msg := parseLine(tc.in)
		if level != tc.level || msg != tc.msg {
			t.Errorf("parseLine(%q) = %v %q, want %v %q", tc.in, level, msg, tc.level, tc.msg)
		}
	}
}

func TestLogWriterRoutesAndReportsSuspects(t *testing.T) {
	var out syncBuffer
	var suspects []string
	w := &logWriter{log: zerolog.New(&out), onSuspect: func(n string) { suspects = append(suspects, n) }}
	in := "[INFO] memberlist: Suspect host-c has failed, no acks received\n[WARN] memberlist: something\n"
	if n, err := w.Write([]byte(in)); n != len(in) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(suspects) != 1 || suspects[0] != "host-c" {
		t.Errorf("suspects = %v", suspects)
	}
	got := out.String()
	if !strings.Contains(got, `"level":"info"`) || !strings.Contains(got, `"level":"warn"`) || !strings.Contains(got, `"source":"memberlist"`) {
		t.Errorf("log output: %s", got)
	}
}

func TestMetaRoundTripAndBounds(t *testing.T) {
	b, err := encodeMeta(RoleCoordinator, map[string]string{"grpc": "10.0.0.1:7000"}, false)
	if err != nil {
		t.Fatal(err)
	}
	w, ok := decodeMeta(b)
	if !ok || w.Role != RoleCoordinator || w.Meta["grpc"] != "10.0.0.1:7000" || w.Leaving {
		t.Fatalf("decode = %+v %v", w, ok)
	}
	for _, bad := range [][]byte{nil, []byte("{"), []byte(`{"r":5}`), make([]byte, MetaMaxSize+1)} {
		if _, ok := decodeMeta(bad); ok {
			t.Errorf("decodeMeta(%q) ok", bad)
		}
	}
	if _, err := encodeMeta(RoleAgent, map[string]string{"k": "\xff"}, false); err == nil {
		t.Error("invalid UTF-8 accepted")
	}
	// The size check counts the leaving flag: meta that fits only without it
	// is refused up front.
	for n := 400; n < MetaMaxSize; n++ {
		m := map[string]string{"k": strings.Repeat("v", n)}
		_, e1 := encodeMeta(RoleAgent, m, false)
		_, e2 := encodeMeta(RoleAgent, m, true)
		if e1 == nil && e2 != nil {
			if err := (Config{Name: "h", Role: RoleAgent, Bind: ":0", Insecure: true, Meta: m}).withDefaults().validate(); err == nil {
				t.Fatalf("validate accepted meta of %d bytes that does not fit with the leaving flag", n)
			}
			return
		}
	}
	t.Fatal("no size where only the leaving flag overflows")
}

func TestDeadAfter(t *testing.T) {
	var c Config
	typ3, worst3 := c.DeadAfter(3)
	if typ3 != 3400*time.Millisecond || worst3 != 4400*time.Millisecond {
		t.Errorf("defaults, 3 nodes: %s, %s", typ3, worst3)
	}
	typ10, worst10 := c.DeadAfter(10)
	if typ10 != 3400*time.Millisecond || worst10 != 17400*time.Millisecond {
		t.Errorf("defaults, 10 nodes: %s, %s", typ10, worst10)
	}
	typ100, _ := c.DeadAfter(100)
	if typ100 != 5400*time.Millisecond {
		t.Errorf("defaults, 100 nodes: %s", typ100)
	}
	prev := time.Duration(0)
	for n := 2; n < 2000; n += 37 {
		typ, worst := c.DeadAfter(n)
		if typ > worst || worst < prev {
			t.Fatalf("n=%d: typical %s worst %s (previous worst %s)", n, typ, worst, prev)
		}
		prev = worst
	}
}

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		role, name string
		ok         bool
	}{
		{RoleAgent, "web-01.zone-a", true},
		{RoleAgent, "coordinator/x", false},
		{RoleAgent, "-x", false},
		{RoleAgent, strings.Repeat("a", 129), false},
		{RoleCoordinator, CoordinatorName("c1"), true},
		{RoleCoordinator, "c1", false},
		{RoleCoordinator, "coordinator/", false},
		{"", "x", false},
	} {
		if err := ValidateName(tc.role, tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q, %q) = %v", tc.role, tc.name, err)
		}
	}
}

func TestSuspicionExpiresAndDeadIsForgotten(t *testing.T) {
	g, err := Start(Config{Name: "solo", Role: RoleAgent, Bind: "127.0.0.1:0", Insecure: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.mu.Lock()
	g.members["peer"] = &member{Member: Member{Name: "peer", State: StateAlive, Since: time.Now()}}
	g.mu.Unlock()
	ch, unsubscribe := g.Changes()
	defer unsubscribe()

	g.markSuspect("peer")
	g.markSuspect("unknown") // never seen: ignored
	if s := g.State("peer"); s != StateSuspect {
		t.Fatalf("after a failed probe: %q", s)
	}
	if g.State("unknown") != "" {
		t.Fatal("a suspicion about an unknown node created it")
	}
	select {
	case <-ch:
	default:
		t.Fatal("no change notification for suspect")
	}
	g.tick(time.Now()) // still within the suspicion time
	if s := g.State("peer"); s != StateSuspect {
		t.Fatalf("suspicion ended early: %q", s)
	}
	g.tick(time.Now().Add(g.cfg.maxSuspicion(2) + time.Second))
	if s := g.State("peer"); s != StateAlive {
		t.Fatalf("suspicion never refuted nor confirmed: %q, want alive", s)
	}

	g.mu.Lock()
	g.members["peer"].State = StateDead
	g.mu.Unlock()
	g.tick(time.Now().Add(time.Hour))
	if s := g.State("peer"); s != StateDead {
		t.Fatalf("dead member forgotten too early: %q", s)
	}
	g.tick(time.Now().Add(DefaultForgetAfter + time.Minute))
	if s := g.State("peer"); s != "" {
		t.Fatalf("dead member not forgotten: %q", s)
	}
	if s := g.State("solo"); s != StateAlive {
		t.Fatalf("local node: %q", s)
	}
	// After Close the local node is left, and Close is idempotent.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if s := g.State("solo"); s != StateLeft {
		t.Fatalf("local node after Close: %q", s)
	}
}
