package tlsutil

import (
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestTLSIdentityStringURIValidate(t *testing.T) {
	cases := []struct {
		id       Identity
		str, uri string
	}{
		{Identity{Kind: KindAgent, Name: "host-1"}, "agent:host-1", "fleetwave://agent/host-1"},
		{Identity{Kind: KindCoordinator, Name: "c1"}, "coordinator:c1", "fleetwave://coordinator/c1"},
		{Identity{Kind: KindOperator, Name: "alice", Role: RoleAdmin}, "operator:alice (admin)", "fleetwave://operator/alice?role=admin"},
		{Identity{Kind: KindOperator, Name: "ci.bot_1", Role: RoleDeployer}, "operator:ci.bot_1 (deployer)", "fleetwave://operator/ci.bot_1?role=deployer"},
	}
	for _, c := range cases {
		if err := c.id.Validate(); err != nil {
			t.Errorf("%+v: %v", c.id, err)
		}
		if got := c.id.String(); got != c.str {
			t.Errorf("String() = %q, want %q", got, c.str)
		}
		if got := c.id.URI().String(); got != c.uri {
			t.Errorf("URI() = %q, want %q", got, c.uri)
		}
		back, err := ParseIdentity(c.uri)
		if err != nil || back != c.id {
			t.Errorf("ParseIdentity(%q) = %+v, %v; want %+v", c.uri, back, err, c.id)
		}
	}
	bad := []Identity{
		{},
		{Kind: "host", Name: "h"},
		{Kind: KindAgent},
		{Kind: KindAgent, Name: "-host"},
		{Kind: KindAgent, Name: "host/1"},
		{Kind: KindAgent, Name: "../x"},
		{Kind: KindAgent, Name: strings.Repeat("a", 129)},
		{Kind: KindAgent, Name: "h", Role: RoleAdmin},
		{Kind: KindCoordinator, Name: "c", Role: RoleViewer},
		{Kind: KindOperator, Name: "bob"},
		{Kind: KindOperator, Name: "bob", Role: "root"},
		{Kind: KindOperator, Name: "bob", Role: "Admin"},
	}
	for _, id := range bad {
		if err := id.Validate(); !errors.Is(err, ErrInvalidIdentity) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidIdentity", id, err)
		}
	}
}

func TestTLSParseIdentityRejectsNonCanonical(t *testing.T) {
	for _, s := range []string{
		"",
		"agent/host-1",
		"https://agent/host-1",
		"spiffe://agent/host-1",
		"fleetwave://agent/",
		"fleetwave://agent/host-1/x",
		"fleetwave://agent/host-1?role=admin",
		"fleetwave://agent/host-1?x=1",
		"fleetwave://agent/host-1#frag",
		"fleetwave://agent:80/host-1",
		"fleetwave://u@agent/host-1",
		"fleetwave://agent/host%2D1",
		"fleetwave://agent//host-1",
		"fleetwave://operator/alice",
		"fleetwave://operator/alice?role=admin&role=viewer",
		"fleetwave://operator/alice?role=admin&x=1",
		"fleetwave://operator/alice?role=superuser",
		"fleetwave://Agent/host-1",
		"fleetwave:agent/host-1",
	} {
		if id, err := ParseIdentity(s); err == nil {
			t.Errorf("ParseIdentity(%q) = %+v, want an error", s, id)
		} else if !errors.Is(err, ErrInvalidIdentity) {
			t.Errorf("ParseIdentity(%q) error %v does not wrap ErrInvalidIdentity", s, err)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestTLSIdentityFromCert(t *testing.T) {
	ca := newTestCA(t)
	key, _, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	mk := func(uris ...string) *x509.Certificate {
		var us []*url.URL
		for _, s := range uris {
			us = append(us, mustURL(t, s))
		}
		return rawCert(t, ca, key.Public(), us, now.Add(-time.Minute), now.Add(time.Hour))
	}
	good := []struct {
		cert *x509.Certificate
		want Identity
	}{
		{mk("fleetwave://agent/host-1"), Identity{Kind: KindAgent, Name: "host-1"}},
		{mk("spiffe://example.org/x", "fleetwave://operator/bob?role=viewer"), Identity{Kind: KindOperator, Name: "bob", Role: RoleViewer}},
	}
	for _, g := range good {
		got, err := IdentityFromCert(g.cert)
		if err != nil || got != g.want {
			t.Errorf("IdentityFromCert(%v) = %+v, %v; want %+v", g.cert.URIs, got, err, g.want)
		}
	}
	bad := []struct {
		cert *x509.Certificate
		want string
	}{
		{mk(), "no fleetwave:// URI SAN"},
		{mk("spiffe://example.org/x"), "no fleetwave:// URI SAN"},
		{mk("fleetwave://agent/host-1", "fleetwave://agent/host-2"), "more than one"},
		{mk("fleetwave://agent/host-1", "fleetwave://agent/host-1"), "more than one"},
		{mk("fleetwave://operator/bob?role=root"), `role "root"`},
		{mk("fleetwave://operator/bob"), `role ""`},
		{mk("fleetwave://agent/host-1?role=admin"), "only operators"},
		{mk("fleetwave://robot/r1"), "unknown kind"},
		{nil, "no certificate"},
	}
	for _, b := range bad {
		id, err := IdentityFromCert(b.cert)
		if err == nil {
			t.Errorf("IdentityFromCert accepted %v as %+v", b.cert.URIs, id)
			continue
		}
		if !errors.Is(err, ErrInvalidIdentity) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("IdentityFromCert error %v, want ErrInvalidIdentity mentioning %q", err, b.want)
		}
	}
}

func TestTLSParseSerialAndIdentityName(t *testing.T) {
	for in, want := range map[string]string{"ab": "ab", "AB": "ab", "00:0A:BC": "abc", "0x1f": "1f", strings.Repeat("f", 40): strings.Repeat("f", 40)} {
		if got, err := ParseSerial(in); err != nil || got != want {
			t.Errorf("ParseSerial(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "00:00", "xyz", "12 34", strings.Repeat("f", 41), "-1"} {
		if got, err := ParseSerial(in); err == nil {
			t.Errorf("ParseSerial(%q) = %q, want an error", in, got)
		}
	}
	for in, want := range map[string]string{"agent:web-1": "agent web-1", "operator:alice": "operator alice", "coordinator:c1": "coordinator c1"} {
		k, n, err := ParseIdentityName(in)
		if err != nil || k+" "+n != want {
			t.Errorf("ParseIdentityName(%q) = %q %q, %v", in, k, n, err)
		}
	}
	for _, in := range []string{"", "agent", "agent:", "robot:r1", "agent:a/b", "operator:alice?role=admin", ":x"} {
		if k, n, err := ParseIdentityName(in); err == nil {
			t.Errorf("ParseIdentityName(%q) = %q %q, want an error", in, k, n)
		}
	}
}
