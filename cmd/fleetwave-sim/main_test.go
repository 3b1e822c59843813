package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--hosts", "-1"},
		{"--fail-rate", "1.5"},
		{"--labels", "nokey"},
		{"--coordinator", "nope"},
		{"--stats-interval", "0s"},
		{"--p2p"}, // without --fetch
		{"--fetch", "--byte-scale", "-1"},
		{"--fetch", "--peer-max-uploads", "1025"},
		{"--fetch", "--download-rate", "-5"},
		{"extra"},
		{"--control", "--hosts", "-1"},
	} {
		var out bytes.Buffer
		err := run(context.Background(), args, strings.NewReader(""), &out, &out)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%v) = %v, want a usage error", args, err)
		}
	}
	if err := run(context.Background(), []string{"--help"}, strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

// The fleet runs (retrying a coordinator that is not there) until the
// context ends, then logs its statistics once more and returns.
func TestRunStopsWhenInterrupted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"--coordinator", "127.0.0.1:1", "--hosts", "3", "--stats-interval", "50ms"}, strings.NewReader(""), &out, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, `"hosts":3`) || !strings.Contains(got, "fleet stats") || !strings.Contains(got, `"connected":0`) {
		t.Errorf("log:\n%s", got)
	}
}

// With --control the fleet is driven over stdin and stdout (real pipes)
// until stdin ends: requests answered by id, bad ones refused naming the
// field and value, no periodic statistics; its logs stay on stderr.
func TestRunControl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--control", "--coordinator", "127.0.0.1:1", "--hosts", "3", "--stats-interval", "1ms"}, inR, outW, &logs)
		outW.Close()
	}()
	sc := bufio.NewScanner(outR)
	for _, c := range []struct{ send, want string }{
		{"1 stats\n", `1 ok {"Hosts":3,"Connected":0,`},
		{"2 wait-connected 4 1s\n", `2 error wait-connected: n: "4", want 0..3 (the fleet's hosts)`},
		{"3 reset-latency\n", "3 ok"},
		{"4 wait-all web v1 1ms\n", "4 error wait for 3 hosts healthy on web v1 (0 now): context deadline exceeded"},
		{"5 start\n", `5 error verb: "start", want wait-connected, wait-all, reset-latency or stats`},
	} {
		if _, err := inW.WriteString(c.send); err != nil {
			t.Fatal(err)
		}
		if !sc.Scan() {
			t.Fatalf("no reply to %q: %v", c.send, sc.Err())
		}
		if got := sc.Text(); !strings.HasPrefix(got, c.want) {
			t.Errorf("sent %q: %q, want %q...", c.send, got, c.want)
		}
	}
	inW.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	inR.Close()
	if sc.Scan() {
		t.Errorf("more on stdout: %q", sc.Text())
	}
	// One line of statistics, at the end: none every --stats-interval.
	if got := strings.Count(logs.String(), "fleet stats"); got != 1 {
		t.Errorf("%d statistics lines, want 1:\n%s", got, logs.String())
	}
}
