package tlsutil

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTLSInitWritesFleet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	opts := InitOptions{
		Coordinators: map[string][]string{"c1": {"coord.example", "10.0.0.5"}, "c2": nil},
		Agents:       []string{"host-2", "host-1", "host-1"},
		Operators:    map[string]string{"alice": RoleAdmin, "ci": RoleDeployer},
		TTL:          48 * time.Hour,
	}
	issueStart := time.Now()
	if err := Init(dir, opts); err != nil {
		t.Fatal(err)
	}
	issueEnd := time.Now()
	var names []string
	for _, f := range opts.Files() {
		names = append(names, f.Name)
	}
	want := []string{
		"ca.pem", "ca-key.pem", "join-ca.pem", "join-ca-key.pem",
		"coordinator-c1.pem", "coordinator-c1-key.pem", "coordinator-c2.pem", "coordinator-c2-key.pem",
		"agent-host-1.pem", "agent-host-1-key.pem", "agent-host-2.pem", "agent-host-2-key.pem",
		"operator-alice.pem", "operator-alice-key.pem", "operator-ci.pem", "operator-ci-key.pem",
	}
	if !slices.Equal(names, want) {
		t.Fatalf("Files() = %v\nwant %v", names, want)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Errorf("dir holds %d entries, want %d (no temporary files left)", len(entries), len(want))
	}
	ca, err := LoadCA(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range opts.Files() {
		path := filepath.Join(dir, f.Name)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		wantMode := os.FileMode(0o644)
		if f.Key {
			wantMode = 0o600
		}
		if fi.Mode().Perm() != wantMode || f.Mode != wantMode {
			t.Errorf("%s: mode %v (listed %v), want %v", f.Name, fi.Mode().Perm(), f.Mode, wantMode)
		}
		if f.Key || f.Identity == (Identity{}) {
			continue
		}
		if strings.Contains(f.Name, "join-ca") {
			t.Errorf("%s: listed with identity %v", f.Name, f.Identity)
		}
		certs, err := readCertsFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := IdentityFromCert(certs[0])
		if err != nil || got != f.Identity {
			t.Errorf("%s: identity %+v, %v; want %+v", f.Name, got, err, f.Identity)
		}
		if err := certs[0].CheckSignatureFrom(ca.Cert); err != nil {
			t.Errorf("%s: not signed by the CA: %v", f.Name, err)
		}
		if na := certs[0].NotAfter; na.Before(issueStart.Add(48*time.Hour).Truncate(time.Second)) || na.After(issueEnd.Add(48*time.Hour)) {
			t.Errorf("%s: NotAfter %v, want 48h after Init (%v .. %v)", f.Name, na, issueStart, issueEnd)
		}
		// Every pair loads as a TLS key pair.
		if _, err := loadKeyPair(path, filepath.Join(dir, f.Identity.Kind+"-"+f.Identity.Name+"-key.pem")); err != nil {
			t.Errorf("%s: %v", f.Name, err)
		}
	}
	c1, err := readCertsFile(filepath.Join(dir, "coordinator-c1.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c1[0].DNSNames, []string{"coord.example", "localhost"}) || len(c1[0].IPAddresses) != 3 {
		t.Errorf("coordinator-c1 SANs: DNS %v IP %v", c1[0].DNSNames, c1[0].IPAddresses)
	}
	if time.Until(ca.Cert.NotAfter) < 9*365*24*time.Hour {
		t.Errorf("CA expires %v, want the 10-year default", ca.Cert.NotAfter)
	}

	// A second run refuses to replace the CA; with Force it does.
	before, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := Init(dir, InitOptions{Agents: []string{"h"}}); !errors.Is(err, ErrExists) {
		t.Fatalf("second Init: %v, want ErrExists", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "agent-h.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused Init wrote agent-h.pem: %v", err)
	}
	if err := Init(dir, InitOptions{Agents: []string{"h"}, Force: true}); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(before, after) {
		t.Error("Init with Force kept the old CA")
	}
}

func TestTLSInitValidatesFirst(t *testing.T) {
	for _, opts := range []InitOptions{
		{Agents: []string{"ok", "bad/name"}},
		{Operators: map[string]string{"bob": "root"}},
		{Operators: map[string]string{"bob": ""}},
		{Coordinators: map[string][]string{"c1": {""}}},
		{Coordinators: map[string][]string{"c1": {"bad host"}}},
		{Agents: []string{"h"}, TTL: -time.Hour},
		{Agents: []string{"h"}, CATTL: -time.Hour},
	} {
		dir := t.TempDir()
		if err := Init(dir, opts); err == nil {
			t.Errorf("Init(%+v) succeeded", opts)
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, CAFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Init(%+v) failed but wrote the CA", opts)
		}
	}
}
