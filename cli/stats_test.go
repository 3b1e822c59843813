package cli

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

func TestParseStatsSince(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
	}{
		{"30d", 30 * 24 * time.Hour},
		{"1d", 24 * time.Hour},
		{"1.5d", 36 * time.Hour},
		{"1d12h", 36 * time.Hour},
		{"12h", 12 * time.Hour},
		{"90m", 90 * time.Minute},
		{" 7d ", 7 * 24 * time.Hour},
		{"2h30m", 150 * time.Minute},
	} {
		got, err := parseStatsSince(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseStatsSince(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "d", "abc", "30", "0", "0d", "-1h", "-2d", "1e3d", "30days", "1d-1h", "1dx", "NaNd", "99999999999d", "3w"} {
		if got, err := parseStatsSince(in); err == nil {
			t.Errorf("parseStatsSince(%q) = %v, want an error", in, got)
		}
	}
}

func TestStatsDuration(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{-time.Second, "0s"},
		{450 * time.Millisecond, "450ms"},
		{42 * time.Second, "42s"},
		{59*time.Second + 600*time.Millisecond, "1m00s"},
		{4*time.Minute + 12*time.Second, "4m12s"},
		{59*time.Minute + 59*time.Second + 600*time.Millisecond, "1h00m"},
		{3*time.Hour + 5*time.Minute + 20*time.Second, "3h05m"},
		{23*time.Hour + 59*time.Minute + 40*time.Second, "1d"},
		{2*24*time.Hour + 4*time.Hour + 10*time.Minute, "2d4h"},
		{30 * 24 * time.Hour, "30d"},
	} {
		if got := statsDuration(c.d); got != c.want {
			t.Errorf("statsDuration(%s) = %q, want %q", c.d, got, c.want)
		}
	}
}

func TestStatsFrequency(t *testing.T) {
	for _, c := range []struct {
		perDay float64
		want   string
	}{
		{0, "0/day"},
		{3.25, "3.2/day"},
		{1, "1.0/day"},
		{4.0 / 30, "4.0/month"},
		{1.0 / 7, "1.0/week"},
		{1.0 / 20, "1.5/month"},
	} {
		if got := statsFrequency(c.perDay); got != c.want {
			t.Errorf("statsFrequency(%v) = %q, want %q", c.perDay, got, c.want)
		}
	}
}

// statsResponse is a GetStats answer for two services and the fleet.
func statsResponse() *v1.GetStatsResponse {
	from := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	ds := func(n uint32, med, p90 time.Duration) *v1.DurationStats {
		if n == 0 {
			return &v1.DurationStats{}
		}
		return &v1.DurationStats{Count: n, Median: durationpb.New(med), P90: durationpb.New(p90)}
	}
	web := &v1.DeployStats{
		Service: "web", Rollouts: 6, Succeeded: 3, Failed: 1, RolledBack: 1, Superseded: 1,
		DeploysPerDay:       4.0 / 30,
		LeadTime:            ds(3, 50*time.Minute, 75*time.Minute),
		CommitToRelease:     ds(3, 10*time.Minute, 20*time.Minute),
		ReleaseToStart:      ds(4, 0, time.Hour),
		Rollout:             ds(4, 15*time.Minute, 30*time.Minute),
		Bake:                ds(4, 0, 5*time.Minute),
		ChangeFailureRate:   0.4,
		TimeToRestore:       ds(1, 3*time.Minute, 3*time.Minute),
		LeadTimeBand:        "elite",
		DeployFrequencyBand: "medium",
		ChangeFailureBand:   "medium",
		RestoreBand:         "elite",
		OverallBand:         "medium",
	}
	idle := &v1.DeployStats{
		Service: "idle", LeadTime: ds(0, 0, 0), CommitToRelease: ds(0, 0, 0), ReleaseToStart: ds(0, 0, 0),
		Rollout: ds(0, 0, 0), Bake: ds(0, 0, 0), TimeToRestore: ds(0, 0, 0),
	}
	fleet := proto.Clone(web).(*v1.DeployStats)
	fleet.Service = ""
	fleet.DeploysPerDay = 2.5
	fleet.DeployFrequencyBand = "elite"
	return &v1.GetStatsResponse{
		Services: []*v1.DeployStats{idle, web},
		Fleet:    fleet,
		From:     timestamppb.New(from),
		To:       timestamppb.New(from.Add(30 * 24 * time.Hour)),
	}
}

// statsLine returns the line of out that starts (after indentation) with
// prefix, within the block whose title starts with block.
func statsLine(t *testing.T, out, block, prefix string) string {
	t.Helper()
	in := false
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, block) {
			in = true
			continue
		}
		if in && l == "" {
			break
		}
		if in && strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return l
		}
	}
	t.Fatalf("no line %q in block %q:\n%s", prefix, block, out)
	return ""
}

func TestPrintStats(t *testing.T) {
	var buf bytes.Buffer
	if err := printStats(&buf, statsResponse()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	wantContains(t, "stats", out,
		"DORA figures from 2024-06-01T00:00:00Z to 2024-07-01T00:00:00Z (30d)",
		"\nweb: 6 rollouts ended in the window: 3 succeeded, 1 failed, 1 rolled back, 1 superseded\n",
		"\nidle: 0 rollouts ended in the window\n",
		"\nfleet (2 services): 6 rollouts ended",
		"FIGURE", "VALUE", "P90", "BAND",
	)
	for _, c := range []struct {
		block, prefix string
		fields        []string
	}{
		{"web:", "deployment frequency", []string{"4.0/month", "medium"}},
		{"web:", "lead time (commit → every host live)", []string{"50m00s", "1h15m", "3", "elite"}},
		{"web:", "CI (commit → release)", []string{"10m00s", "20m00s", "3"}},
		{"web:", "queue and approval (release → start)", []string{"0s", "1h00m", "4"}},
		{"web:", "rollout (start → every host live)", []string{"15m00s", "30m00s", "4"}},
		{"web:", "of which bake", []string{"0s", "5m00s", "4"}},
		{"web:", "change failure rate", []string{"40.0%", "2/5", "medium"}},
		{"web:", "time to restore", []string{"3m00s", "1 (1 not restored)", "elite"}},
		{"web:", "overall", []string{"medium"}},
		{"idle:", "deployment frequency", []string{"-"}},
		{"idle:", "lead time", []string{"-", "0"}},
		{"idle:", "change failure rate", []string{"-"}},
		{"idle:", "overall", []string{"-"}},
		{"fleet", "deployment frequency", []string{"2.5/day", "elite"}},
	} {
		l := statsLine(t, out, c.block, c.prefix)
		rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), c.prefix))
		for _, f := range c.fields {
			if !strings.Contains(rest, f) {
				t.Errorf("%s %s: %q lacks %q", c.block, c.prefix, rest, f)
			}
		}
	}
	// Columns line up (in runes: the arrows are one column wide): the
	// lead time's value starts where the header's VALUE does.
	header := []rune(statsLine(t, out, "web:", "FIGURE"))
	col := strings.Index(string(header), "VALUE") // ASCII up to here
	lead := []rune(statsLine(t, out, "web:", "lead time"))
	if len(lead) <= col || lead[col-1] != ' ' || lead[col] != '5' {
		t.Errorf("lead time row does not line up with the header:\n%s\n%s", string(header), string(lead))
	}

	// One service: no fleet block.
	one := statsResponse()
	one.Services = one.Services[1:]
	buf.Reset()
	if err := printStats(&buf, one); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "fleet") {
		t.Errorf("one service printed a fleet block:\n%s", buf.String())
	}

	// No services.
	buf.Reset()
	if err := printStats(&buf, &v1.GetStatsResponse{}); err != nil {
		t.Fatal(err)
	}
	wantContains(t, "empty stats", buf.String(), "no services")

	for _, l := range strings.Split(out, "\n") {
		if strings.HasSuffix(l, " ") {
			t.Errorf("trailing space: %q", l)
		}
	}
}

// statsOperator answers GetStats with a fixed response and records requests.
type statsOperator struct {
	v1.UnimplementedOperatorServiceServer
	mu   sync.Mutex
	reqs []*v1.GetStatsRequest
	resp *v1.GetStatsResponse
}

func (s *statsOperator) GetStats(_ context.Context, req *v1.GetStatsRequest) (*v1.GetStatsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, req)
	return s.resp, nil
}

// runStats runs the CLI's root command with the stats command in it (added
// here unless the root already registers it) and returns the command's
// stdout and its error.
func runStats(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr, getenv: func(k string) string {
		if k == "FLEETWAVE_INSECURE" {
			return "1" // the fake serves plain text
		}
		return ""
	}, hostname: func() (string, error) { return "test", nil }}
	root := a.rootCmd()
	if !hasSubcommand(root, "stats") {
		root.AddCommand(newStatsCmd(a))
	}
	root.SetArgs(args)
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	_, err := root.ExecuteContextC(ctx)
	if a.conn != nil {
		_ = a.conn.Close()
	}
	return stdout.String(), err
}

func hasSubcommand(c *cobra.Command, name string) bool {
	for _, s := range c.Commands() {
		if s.Name() == name {
			return true
		}
	}
	return false
}

func TestStatsCommand(t *testing.T) {
	op := &statsOperator{resp: statsResponse()}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	v1.RegisterOperatorServiceServer(srv, op)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	addr := lis.Addr().String()

	out, err := runStats(t, "--coordinator", addr, "stats")
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	wantContains(t, "stats", out, "web: 6 rollouts", "lead time (commit → every host live)", "fleet (2 services)")

	out, err = runStats(t, "--coordinator", addr, "stats", "web", "--since", "7d", "-o", "json")
	if err != nil {
		t.Fatalf("stats web -o json: %v", err)
	}
	var got v1.GetStatsResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("-o json is not protojson: %v\n%s", err, out)
	}
	if !proto.Equal(&got, op.resp) {
		t.Errorf("-o json printed %v, want %v", &got, op.resp)
	}
	wantContains(t, "json", out, `"deploys_per_day"`, `"lead_time_band"`) // proto names; protojson varies its spacing

	op.mu.Lock()
	reqs := op.reqs
	op.mu.Unlock()
	if len(reqs) != 2 {
		t.Fatalf("%d GetStats calls, want 2", len(reqs))
	}
	if reqs[0].GetService() != "" || reqs[0].GetSince().AsDuration() != 30*24*time.Hour {
		t.Errorf("default request %v, want every service over 30 days", reqs[0])
	}
	if reqs[1].GetService() != "web" || reqs[1].GetSince().AsDuration() != 7*24*time.Hour {
		t.Errorf("request %v, want web over 7 days", reqs[1])
	}
}

func TestStatsBadSince(t *testing.T) {
	// Nothing listens here: the flag is refused before any call.
	_, err := runStats(t, "--coordinator", "127.0.0.1:1", "stats", "--since", "soon")
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T), want a usage error", err, err)
	}
	wantContains(t, "error", err.Error(), `invalid --since "soon"`, "30d")

	_, err = runStats(t, "--coordinator", "127.0.0.1:1", "stats", "a", "b")
	if err == nil || !strings.Contains(err.Error(), "accepts at most 1 arg(s)") {
		t.Errorf("two services: %v, want an argument error", err)
	}
}
