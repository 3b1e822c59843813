package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/tlsutil"
)

// runTLS runs the CLI's root command with the tls command in it (added here
// unless the root already registers it) and returns stdout and the error.
func runTLS(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	a := &app{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }, hostname: func() (string, error) { return "test", nil }}
	root := a.rootCmd()
	registered := false
	for _, c := range root.Commands() {
		registered = registered || c.Name() == "tls"
	}
	if !registered {
		root.AddCommand(a.tlsCmd())
	}
	root.SetArgs(args)
	root.SetOut(&stdout)
	root.SetErr(&stderr)
	_, err := root.ExecuteContextC(ctx)
	if a.conn != nil {
		t.Error("tls dialled the coordinator")
		_ = a.conn.Close()
	}
	if a.coordinator != DefaultCoordinator {
		t.Errorf("tls --coordinator changed the global coordinator address to %q", a.coordinator)
	}
	return stdout.String(), err
}

func readTLSCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("%s: no certificate", file)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTLSInitCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	args := []string{"tls", "init", "--dir", dir,
		"--coordinator", "c1=coord.example,10.0.0.5", "--coordinator", "c2",
		"--agent", "host-1", "--agent", "host-2",
		"--operator", "alice=admin", "--operator", "ci=deployer",
		"--ttl", "24h"}
	issueStart := time.Now()
	out, err := runTLS(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	issueEnd := time.Now()
	pool := x509.NewCertPool()
	pool.AddCert(readTLSCert(t, filepath.Join(dir, "ca.pem")))
	files := []struct {
		name string
		mode os.FileMode
		id   string
	}{
		{"ca.pem", 0o644, ""},
		{"ca-key.pem", 0o600, ""},
		{"join-ca.pem", 0o644, ""},
		{"join-ca-key.pem", 0o600, ""},
		{"coordinator-c1.pem", 0o644, "coordinator:c1"},
		{"coordinator-c1-key.pem", 0o600, ""},
		{"coordinator-c2.pem", 0o644, "coordinator:c2"},
		{"coordinator-c2-key.pem", 0o600, ""},
		{"agent-host-1.pem", 0o644, "agent:host-1"},
		{"agent-host-1-key.pem", 0o600, ""},
		{"agent-host-2.pem", 0o644, "agent:host-2"},
		{"agent-host-2-key.pem", 0o600, ""},
		{"operator-alice.pem", 0o644, "operator:alice (admin)"},
		{"operator-alice-key.pem", 0o600, ""},
		{"operator-ci.pem", 0o644, "operator:ci (deployer)"},
		{"operator-ci-key.pem", 0o600, ""},
	}
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %04o, want %04o", f.name, fi.Mode().Perm(), f.mode)
		}
		wantContains(t, "output", out, path)
		if f.id == "" {
			continue
		}
		c := readTLSCert(t, path)
		id, err := tlsutil.IdentityFromCert(c)
		if err != nil || id.String() != f.id {
			t.Errorf("%s: identity %v, %v; want %s", f.name, id, err, f.id)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s: %v", f.name, err)
		}
		if na := c.NotAfter; na.Before(issueStart.Add(24*time.Hour).Truncate(time.Second)) || na.After(issueEnd.Add(24*time.Hour)) {
			t.Errorf("%s: NotAfter %v, want 24h (--ttl) after tls init (%v .. %v)", f.name, na, issueStart, issueEnd)
		}
		wantContains(t, "output", out, f.id)
	}
	c1 := readTLSCert(t, filepath.Join(dir, "coordinator-c1.pem"))
	if !slices.Contains(c1.DNSNames, "coord.example") || !slices.Contains(c1.DNSNames, "localhost") ||
		!slices.ContainsFunc(c1.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.ParseIP("10.0.0.5")) }) ||
		!slices.ContainsFunc(c1.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.ParseIP("127.0.0.1")) }) {
		t.Errorf("coordinator-c1 SANs: DNS %v, IP %v", c1.DNSNames, c1.IPAddresses)
	}
	wantContains(t, "output", out, "hosts coord.example,10.0.0.5,localhost", "root CA certificate: give it", "root CA key: it signs every certificate: keep it offline", "join CA key: only for coordinators that sign joins")

	// The CA is not replaced without --force.
	before, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = runTLS(t, "tls", "init", "--dir", dir, "--agent", "host-3")
	if err == nil || !strings.Contains(err.Error(), "--force") || errors.As(err, new(*usageError)) {
		t.Fatalf("second init: %v, want a run error pointing at --force", err)
	}
	if _, err := runTLS(t, "tls", "init", "--dir", dir, "--agent", "host-3", "--force"); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before, after) {
		t.Error("--force kept the old CA")
	}
	if _, err := os.Stat(filepath.Join(dir, "agent-host-3.pem")); err != nil {
		t.Error(err)
	}
}

func TestTLSInitFlagErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--agent", "bad/host"}, `invalid --agent "bad/host"`},
		{[]string{"--agent", ""}, `invalid --agent ""`},
		{[]string{"--agent", "h1", "--agent", "h1"}, `invalid --agent "h1": given twice`},
		{[]string{"--operator", "bob"}, `invalid --operator "bob": want NAME=ROLE`},
		{[]string{"--operator", "bob=root"}, `invalid --operator "bob=root"`},
		{[]string{"--operator", "=admin"}, `invalid --operator "=admin"`},
		{[]string{"--operator", "bob=admin", "--operator", "bob=viewer"}, `invalid --operator "bob=viewer"`},
		{[]string{"--coordinator", "c1="}, `invalid --coordinator "c1="`},
		{[]string{"--coordinator", "c1=a b"}, `invalid --coordinator "c1=a b"`},
		{[]string{"--coordinator", "c1=ok,,x"}, `invalid --coordinator "c1=ok,,x"`},
		{[]string{"--coordinator", "-c"}, `invalid --coordinator "-c"`},
		{[]string{"--coordinator", "c1", "--coordinator", "c1=x"}, `invalid --coordinator "c1=x"`},
		{[]string{"--ttl", "-1h"}, "invalid --ttl -1h0m0s"},
		{[]string{"--ttl", "0s"}, "invalid --ttl 0s"},
		{[]string{"--ca-ttl", "-5m"}, "invalid --ca-ttl -5m0s"},
	}
	for _, c := range cases {
		args := append([]string{"tls", "init", "--dir", dir}, c.args...)
		_, err := runTLS(t, args...)
		if err == nil || !errors.As(err, new(*usageError)) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want a usage error containing %q", c.args, err, c.want)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("refused runs wrote %d files", len(entries))
	}
	if _, err := runTLS(t, "tls", "init", "--agent", "h1"); err == nil || !strings.Contains(err.Error(), "dir") {
		t.Errorf("without --dir: %v", err)
	}
	if _, err := runTLS(t, "tls", "init", "--dir", ""); err == nil || !strings.Contains(err.Error(), `invalid --dir ""`) {
		t.Errorf("empty --dir: %v", err)
	}
}

func TestTLSJoinCACommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if code, _, stderr := runCLI(t, "tls", "init", "--dir", dir); code != 0 {
		t.Fatalf("tls init: %d %s", code, stderr)
	}
	before := readTLSCert(t, filepath.Join(dir, "join-ca.pem"))
	code, stdout, stderr := runCLI(t, "tls", "join-ca", "--dir", dir, "--ttl", "720h")
	if code != 0 || !strings.Contains(stdout, "join-ca-key.pem") {
		t.Fatalf("tls join-ca: %d %s%s", code, stdout, stderr)
	}
	after := readTLSCert(t, filepath.Join(dir, "join-ca.pem"))
	if after.Equal(before) || time.Until(after.NotAfter) > 721*time.Hour {
		t.Errorf("join CA not replaced with a 720h one: NotAfter %v", after.NotAfter)
	}
	if err := after.CheckSignatureFrom(readTLSCert(t, filepath.Join(dir, "ca.pem"))); err != nil {
		t.Errorf("new join CA not signed by the root: %v", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"tls", "join-ca", "--dir", dir, "--ttl", "0s"}, "invalid --ttl"},
		{[]string{"tls", "join-ca", "--dir", t.TempDir()}, "ca.pem"},
	} {
		if code, _, stderr := runCLI(t, c.args...); code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %s; want %q", c.args, code, stderr, c.want)
		}
	}
}
