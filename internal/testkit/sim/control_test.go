package sim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestParseControlRequest(t *testing.T) {
	good := []struct {
		line string
		want controlRequest
	}{
		{"1 wait-connected 3 5s", controlRequest{id: 1, verb: verbWaitConnected, n: 3, deadline: 5 * time.Second}},
		{"7 wait-connected 0 24h", controlRequest{id: 7, verb: verbWaitConnected, deadline: MaxControlWait}},
		{"  9223372036854775807   wait-all web v1.2 1ms ", controlRequest{id: 1<<63 - 1, verb: verbWaitAll, service: "web", version: "v1.2", deadline: time.Millisecond}},
		{"2 reset-latency", controlRequest{id: 2, verb: verbResetLatency}},
		{"3 stats", controlRequest{id: 3, verb: verbStats}},
	}
	for _, c := range good {
		got, err := parseControlRequest(c.line, 10)
		if err != nil || got != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
	bad := []struct {
		line   string
		id     uint64 // the id the error is answered with
		errHas string
	}{
		{"", 0, "empty line"},
		{"stats", 0, `id: "stats"`},
		{"0 stats", 0, `id: "0"`},
		{"-1 stats", 0, `id: "-1"`},
		{"9223372036854775808 stats", 0, `id: "9223372036854775808"`},
		{"5", 5, "verb: missing"},
		{"5 launch", 5, `verb: "launch", want wait-connected`},
		{"5 stats now", 5, "stats: 1 argument(s), want 0"},
		{"5 reset-latency x", 5, "reset-latency: 1 argument(s), want 0"},
		{"5 wait-connected 3", 5, "wait-connected: 1 argument(s), want 2: <n> <timeout>"},
		{"5 wait-connected 11 5s", 5, `wait-connected: n: "11", want 0..10`},
		{"5 wait-connected -1 5s", 5, `wait-connected: n: "-1"`},
		{"5 wait-connected x 5s", 5, `wait-connected: n: "x"`},
		{"5 wait-connected 3 0s", 5, `wait-connected: timeout: "0s", want a duration in (0, 24h0m0s]`},
		{"5 wait-connected 3 -1s", 5, `wait-connected: timeout: "-1s"`},
		{"5 wait-connected 3 25h", 5, `wait-connected: timeout: "25h"`},
		{"5 wait-connected 3 soon", 5, `wait-connected: timeout: "soon"`},
		{"5 wait-all web v1", 5, "wait-all: 2 argument(s), want 3"},
		{"5 wait-all Web v1 1s", 5, `wait-all: service: invalid name "Web"`},
		{"5 wait-all web v/1 1s", 5, `wait-all: version: invalid version "v/1"`},
		{"5 wait-all web v1 1y", 5, `wait-all: timeout: "1y"`},
		{"5 " + strings.Repeat("x", 200), 5, `verb: "` + strings.Repeat("x", 64) + `..."`},
	}
	for _, c := range bad {
		got, err := parseControlRequest(c.line, 10)
		if err == nil || !strings.Contains(err.Error(), c.errHas) || got.id != c.id {
			t.Errorf("%q: id %d, %v; want id %d and an error with %q", c.line, got.id, err, c.id, c.errHas)
		}
	}
}

func TestParseControlReply(t *testing.T) {
	for _, c := range []struct {
		line string
		id   uint64
		rep  controlReply
	}{
		{"4 ok", 4, controlReply{ok: true}},
		{`4 ok {"Hosts":3}`, 4, controlReply{ok: true, body: `{"Hosts":3}`}},
		{"0 error line of more than 1024 bytes refused", 0, controlReply{body: "line of more than 1024 bytes refused"}},
	} {
		id, rep, err := parseControlReply(c.line)
		if err != nil || id != c.id || rep != c.rep {
			t.Errorf("%q: %d %+v %v", c.line, id, rep, err)
		}
	}
	for _, line := range []string{"", "x ok", "4", "4 fine", "-4 ok"} {
		if _, _, err := parseControlReply(line); err == nil {
			t.Errorf("%q: accepted", line)
		}
	}
}

// controlSession serves f over a pair of real pipes and returns the
// request writer, the reply reader, and the channel of ServeControl's
// result (the reply writer is closed when it returns).
func controlSession(t *testing.T, ctx context.Context, f *Fleet) (w, r *os.File, done chan error) {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inW.Close(); outR.Close() })
	done = make(chan error, 1)
	go func() {
		done <- ServeControl(ctx, f, inR, outW)
		inR.Close()
		outW.Close()
	}()
	return inW, outR, done
}

func replies(r *os.File) *bufio.Scanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), MaxControlReply)
	return sc
}

func nextReply(t *testing.T, sc *bufio.Scanner) string {
	t.Helper()
	if !sc.Scan() {
		t.Fatalf("no reply: %v", sc.Err())
	}
	return sc.Text()
}

// A fleet whose coordinator is not there: requests are served, bad and
// oversized lines refused with the field and value named, the session
// goes on after them, and at most MaxControlInFlight requests wait at once.
func TestServeControlRefusesBadLines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := Start(ctx, Config{Coordinator: "127.0.0.1:1", Hosts: 2, Seed: 1}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, r, done := controlSession(t, ctx, f)
	sc := replies(r)
	send := func(s string) {
		t.Helper()
		if _, err := w.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ send, want string }{
		{"1 stats\n", `1 ok {"Hosts":2,"Connected":0,`},
		{"2 wait-connected 3 1s\n", `2 error wait-connected: n: "3", want 0..2 (the fleet's hosts)`},
		{"x stats\n", `0 error id: "x", want a decimal`},
		{"3 wait-all web v1 1ms\r\n", "3 error wait for 2 hosts healthy on web v1 (0 now): context deadline exceeded"},
		{strings.Repeat("4", MaxControlLine) + " stats\n", fmt.Sprintf("0 error line of more than %d bytes refused", MaxControlLine)},
		{strings.Repeat("z", 3*MaxControlLine) + "\n", "0 error line of more than"},
		{"5 reset-latency\n", "5 ok"},
		{"6 wait-connected 0 1s\n", "6 ok"},
		{"7 wait-connected 1 1ms\n", "7 error wait for 1 connected hosts (0 now): context deadline exceeded"},
	} {
		send(c.send)
		if got := nextReply(t, sc); !strings.HasPrefix(got, c.want) {
			t.Errorf("sent %.40q: reply %q, want %q...", c.send, got, c.want)
		}
	}
	// The line of MaxControlLine bytes exactly is a request.
	line := "8 stats"
	send(line + strings.Repeat(" ", MaxControlLine-len(line)-1) + "\n")
	if got := nextReply(t, sc); !strings.HasPrefix(got, "8 ok {") {
		t.Errorf("line of %d bytes: %q", MaxControlLine, got)
	}

	// MaxControlInFlight waits are served at once; one more is refused.
	for i := range MaxControlInFlight + 1 {
		send(fmt.Sprintf("%d wait-connected 1 1h\n", 100+i))
	}
	if got, want := nextReply(t, sc), fmt.Sprintf("%d error wait-connected: %d requests in flight, at most %d", 100+MaxControlInFlight, MaxControlInFlight, MaxControlInFlight); got != want {
		t.Errorf("request over the limit: %q, want %q", got, want)
	}
	// The end of stdin ends the session: every wait in flight answered.
	w.Close()
	answered := map[string]bool{}
	for sc.Scan() {
		id, rest, _ := strings.Cut(sc.Text(), " ")
		if !strings.HasPrefix(rest, "error wait for 1 connected hosts") || !strings.Contains(rest, "context canceled") {
			t.Errorf("wait %s after the end of stdin: %q", id, rest)
		}
		answered[id] = true
	}
	if len(answered) != MaxControlInFlight {
		t.Errorf("%d waits answered at the end, want %d", len(answered), MaxControlInFlight)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeControl: %v", err)
	}
}

// RemoteFleet drives a fleet through the protocol against a real
// coordinator as the spread harness does: connect, deploy, latency,
// statistics; then its calls fail once the simulator side is gone.
func TestRemoteFleet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 5
	addr := startCoordinator(t)
	o, err := dialOperator(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer o.cc.Close()
	if err := o.apply(ctx, simSpec("web", 1, []uint32{100}, n)); err != nil {
		t.Fatal(err)
	}
	f, err := Start(ctx, Config{Coordinator: addr, Hosts: n, Seed: 1, ReconnectBase: 50 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	inW, outR, done := controlSession(t, ctx, f)
	rf := NewRemoteFleet(inW, outR)

	if err := rf.WaitConnected(ctx, n); err != nil {
		t.Fatal(err)
	}
	if _, err := o.release(ctx, "web", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := rf.WaitAll(ctx, "web", "v1"); err != nil {
		t.Fatal(err)
	}
	s, err := rf.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Hosts != n || s.Connected != n || s.Installs != n || s.Latency.Count == 0 || s.Latency.Max <= 0 || s.SocketLatency.Count == 0 || s.SocketLatency.Count > s.Latency.Count {
		t.Errorf("stats after the deploy: %+v", s)
	}
	if err := rf.ResetLatency(ctx); err != nil {
		t.Fatal(err)
	}
	if s, err := rf.Stats(ctx); err != nil || s.Latency.Count != 0 || s.SocketLatency.Count != 0 {
		t.Errorf("stats after ResetLatency: %+v, %+v, %v", s.Latency, s.SocketLatency, err)
	}
	// The simulator refuses what the fleet cannot answer; the session goes on.
	if err := rf.WaitConnected(ctx, n+1); err == nil || !strings.Contains(err.Error(), fmt.Sprintf(`n: "%d", want 0..%d`, n+1, n)) {
		t.Errorf("WaitConnected(%d): %v", n+1, err)
	}
	if err := rf.WaitAll(ctx, "Web", "v1"); err == nil || !strings.Contains(err.Error(), `service: invalid name "Web"`) {
		t.Errorf("WaitAll(Web): %v", err)
	}
	// A caller's deadline is the simulator's bound on the wait.
	short, cancelShort := context.WithTimeout(ctx, 20*time.Millisecond)
	err = rf.WaitAll(short, "web", "v2")
	cancelShort()
	if err == nil {
		t.Error("WaitAll(v2) with nothing released: nil")
	}
	if s, err := rf.Stats(ctx); err != nil || s.Hosts != n {
		t.Errorf("stats after a wait timed out: %v", err)
	}

	// The simulator side ends with its stdin; calls then fail.
	inW.Close()
	if err := <-done; err != nil {
		t.Errorf("ServeControl: %v", err)
	}
	<-rf.done
	if _, err := rf.Stats(ctx); !errors.Is(err, ErrControlClosed) {
		t.Errorf("Stats after the end: %v, want ErrControlClosed", err)
	}
}
