// Package deployments holds the systemd units, example configs and the
// compose file. Its test checks that every command line in them is one the
// real binaries accept, so the examples cannot drift from the flags.
package deployments

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/fleetwave/fleetwave/internal/testkit/testfleet"
)

// accepts runs a binary with args and -h: the flag package parses every
// flag before -h, so an unknown or malformed flag fails with exit status 2.
func accepts(t *testing.T, bin string, args []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(append([]string{}, args...), "-h")...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
}

func TestExamplesUseRealFlags(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := testfleet.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	binFor := map[string]string{"fleetwave-coordinator": bin.Coordinator, "fleetwave-agent": bin.Agent}

	// The env files: one OPTS variable each, with shell line continuations.
	optsRE := regexp.MustCompile(`(?s)^[A-Z_]+_OPTS="(.*)"\s*$`)
	for file, b := range map[string]string{"examples/coordinator.env": bin.Coordinator, "examples/agent.env": bin.Agent} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var body []string
		for _, l := range strings.Split(string(data), "\n") {
			if !strings.HasPrefix(l, "#") && strings.TrimSpace(l) != "" {
				body = append(body, l)
			}
		}
		m := optsRE.FindStringSubmatch(strings.Join(body, "\n"))
		if m == nil {
			t.Fatalf("%s: no OPTS=\"...\" line", file)
		}
		args := strings.Fields(strings.ReplaceAll(m[1], "\\\n", " "))
		if len(args) < 4 {
			t.Fatalf("%s: options %q", file, args)
		}
		accepts(t, b, args)
	}

	// The compose file: every fleetwave command.
	data, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command []string `json:"command"`
		} `json:"services"`
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	seen := map[string]int{}
	for name, svc := range compose.Services {
		if len(svc.Command) == 0 {
			continue
		}
		if name == "pki" {
			// sh -c: the CLI's tls init and gossip keygen.
			if !strings.Contains(strings.Join(svc.Command, " "), "fleetwave tls init") {
				t.Errorf("pki service does not run tls init: %v", svc.Command)
			}
			continue
		}
		b, ok := binFor[svc.Command[0]]
		if !ok {
			t.Errorf("compose service %s runs %q", name, svc.Command[0])
			continue
		}
		seen[svc.Command[0]]++
		accepts(t, b, svc.Command[1:])
	}
	if seen["fleetwave-coordinator"] < 2 || seen["fleetwave-agent"] < 2 || len(compose.Services) < 4+seen["fleetwave-coordinator"]+seen["fleetwave-agent"] {
		t.Errorf("compose file runs %v of %d services; want 3 etcd, 2+ coordinators, agents", seen, len(compose.Services))
	}

	// The systemd units read their options from the env files.
	for _, unit := range []string{"systemd/fleetwave-coordinator.service", "systemd/fleetwave-agent.service"} {
		data, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "EnvironmentFile=/etc/fleetwave/") || !strings.Contains(string(data), "_OPTS") {
			t.Errorf("%s does not take its options from /etc/fleetwave/*.env", unit)
		}
	}
}
