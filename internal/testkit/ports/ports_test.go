package ports

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// A process never gets the same port twice, and every port is in range and
// bindable.
func TestTakeGivesDistinctFreePorts(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		p := Port(t)
		if p < Low || p >= High {
			t.Fatalf("port %d outside [%d,%d)", p, Low, High)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	l, err := net.Listen("tcp", Addr(t))
	if err != nil {
		t.Fatalf("listen on a taken port: %v", err)
	}
	l.Close()
}

// A port that something listens on, for TCP or for UDP, is not free.
func TestFreeSeesPortsInUse(t *testing.T) {
	p := Port(t)
	if !free(p) {
		t.Fatalf("port %d reserved for this test is not free", p)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatal(err)
	}
	if free(p) {
		t.Errorf("port %d with a TCP listener counted free", p)
	}
	l.Close()
	u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatal(err)
	}
	if free(p) {
		t.Errorf("port %d with a UDP socket counted free", p)
	}
	u.Close()
}

// Ports reserved by one process are never handed to another, even after
// they are free again for binding.
func TestReservationHoldsAcrossProcesses(t *testing.T) {
	if os.Getenv("PORTS_CHILD") == "1" {
		for range 50 {
			fmt.Println(Port(t))
		}
		return
	}
	mine := map[int]bool{}
	for range 50 {
		mine[Port(t)] = true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReservationHoldsAcrossProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PORTS_CHILD=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	n := 0
	for _, line := range strings.Fields(string(out)) {
		p, err := strconv.Atoi(line)
		if err != nil {
			continue
		}
		n++
		if mine[p] {
			t.Errorf("child got port %d, reserved by the parent", p)
		}
	}
	if n != 50 {
		t.Fatalf("child printed %d ports, want 50:\n%s", n, out)
	}
}
