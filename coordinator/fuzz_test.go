package coordinator

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// FuzzValidateAgentMessages feeds arbitrary bytes, decoded as the agent
// stream's messages, through the hub's validation: it never panics, and what
// it accepts has a well-formed host id and bounded text.
func FuzzValidateAgentMessages(f *testing.F) {
	seeds := []proto.Message{
		&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "h1", Labels: map[string]string{"zone": "a"},
			Services: []*v1.ServiceReport{{Service: "web", Generation: 3, CurrentVersion: "v1", Phase: v1.Phase_PHASE_HEALTHY}}}}},
		&v1.ConnectRequest{Msg: &v1.ConnectRequest_Report{Report: &v1.ServiceReport{Service: "web", Reason: strings.Repeat("x", 5000)}}},
		&v1.ConnectRequest{Msg: &v1.ConnectRequest_Hello{Hello: &v1.Hello{HostId: "../etc"}}},
	}
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m v1.ConnectRequest
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		if h := m.GetHello(); h != nil {
			if validateHello(h) == nil {
				if h.GetHostId() == "" || strings.ContainsAny(h.GetHostId(), "/\x00 ") {
					t.Fatalf("hello with host id %q accepted", h.GetHostId())
				}
				if len(h.GetCgroups()) > maxHelloCgroups {
					t.Fatalf("hello with %d bytes of cgroups accepted", len(h.GetCgroups()))
				}
			}
		}
		if r := m.GetReport(); r != nil {
			if validateReport(r) == nil && len(r.GetReason()) > 64<<10 {
				t.Fatalf("report with a %d-byte reason accepted", len(r.GetReason()))
			}
		}
	})
}

// TestValidateHelloCgroups: Hello.cgroups is bounded, and the refusal names
// the field.
func TestValidateHelloCgroups(t *testing.T) {
	h := &v1.Hello{HostId: "h1", Cgroups: "none: " + strings.Repeat("x", maxHelloCgroups-6)}
	if err := validateHello(h); err != nil {
		t.Fatalf("%d bytes: %v", len(h.GetCgroups()), err)
	}
	h.Cgroups += "x"
	if err := validateHello(h); err == nil || !strings.Contains(err.Error(), "hello.cgroups: 513 bytes, over 512") {
		t.Fatalf("513 bytes: %v", err)
	}
}

// TestValidatePeerFields: Hello.peer_address is host:port of at most 256
// bytes and a report's bad_source a host id; refusals name the field.
func TestValidatePeerFields(t *testing.T) {
	for _, c := range []struct {
		addr, want string
	}{
		{"10.0.0.1:7071", ""},
		{"", ""},
		{"no-port", `hello.peer_address: "no-port": want host:port`},
		{":7071", `hello.peer_address: ":7071": want host:port`},
		{strings.Repeat("h", 252) + ":7071", "hello.peer_address: 257 bytes, over 256"},
		{"[::1]:7071", ""},
		{"host-1.example.com:7071", ""},
		// gRPC resolver schemes and other addresses than TCP are refused
		// (a host could make its fetchers dial a unix socket of theirs).
		{"unix:///run/x.sock", `hello.peer_address: "unix:///run/x.sock": the port is not a number`},
		{"unix-abstract:x:7071", `hello.peer_address: "unix-abstract:x:7071": want host:port`},
		{"dns://8.8.8.8/h:7071", `hello.peer_address: "dns://8.8.8.8/h:7071": want host:port`},
		{"bad_host!:7071", `the host is neither an IP address nor a DNS name`},
		{"h:0", `the port is not a number of 1 to 65535`},
		{"h:+80", `the port is not a number of 1 to 65535`},
		{"0.0.0.0:7071", `not an unspecified one`},
		{"[::]:7071", `not an unspecified one`},
		{"[fe80::1%eth0]:7071", `not an unspecified one or one with a zone`},
		{"host-1.example.com.:7071", ""},
		{"h:http", `the port is not a number of 1 to 65535`},
	} {
		err := validateHello(&v1.Hello{HostId: "h1", PeerAddress: c.addr})
		if (c.want == "" && err != nil) || (c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want))) {
			t.Errorf("peer_address %q: %v, want %q", c.addr, err, c.want)
		}
	}
	if err := validateReport(&v1.ServiceReport{Service: "web", BadSource: "host-1"}); err != nil {
		t.Fatal(err)
	}
	if err := validateReport(&v1.ServiceReport{Service: "web", BadSource: "../x"}); err == nil || !strings.Contains(err.Error(), "report.bad_source") {
		t.Fatalf("bad_source ../x: %v", err)
	}
}
