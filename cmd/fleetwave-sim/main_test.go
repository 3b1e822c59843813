package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
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
	} {
		var out bytes.Buffer
		err := run(context.Background(), args, &out)
		if !errors.Is(err, errUsage) {
			t.Errorf("run(%v) = %v, want a usage error", args, err)
		}
	}
	if err := run(context.Background(), []string{"--help"}, &bytes.Buffer{}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

// The fleet runs (retrying a coordinator that is not there) until the
// context ends, then logs its statistics once more and returns.
func TestRunStopsWhenInterrupted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"--coordinator", "127.0.0.1:1", "--hosts", "3", "--stats-interval", "50ms"}, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, `"hosts":3`) || !strings.Contains(got, "fleet stats") || !strings.Contains(got, `"connected":0`) {
		t.Errorf("log:\n%s", got)
	}
}
