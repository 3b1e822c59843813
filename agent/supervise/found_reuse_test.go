package supervise

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/fleetwave/fleetwave/internal/testkit"
)

// TestFoundStopSparesAReusedGroupNumber: the attack of
// TestStopPinsTheLeadersPid against a found (adopted) process, whose leader
// init reaps at once: a daemon that left the group and ignores SIGTERM
// holds the stop's grace open (its cgroup is alive) after the group
// emptied, and an unrelated process group leader takes the freed number.
// The group is signalled only while a live process of the service's cgroup
// is in it: the unrelated one is not SIGKILLed at the end of the grace
// (found by a review of the fix: a live member of any group of that number
// passed its first check).
func TestFoundStopSparesAReusedGroupNumber(t *testing.T) {
	c := testCgroups(t)
	s, cfg, pid, _ := startWithDaemon(t, c, 5*time.Second)
	detach(t, s) // the agent restarts: the next one finds the process
	// init's part: the leader is reaped as soon as it exits.
	go func() {
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(pid, &ws, 0, nil)
	}()
	f, err := FindRunning(cfg.PIDFile, c, testLogger(t))
	if err != nil || f == nil || f.p.cg == nil {
		t.Fatalf("FindRunning = %v, %v (or no cgroup)", f, err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- f.Stop(3*time.Second, testLogger(t)) }()
	testkit.Eventually(t, within, "the leader exited on SIGTERM and was reaped", func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return err != nil
	})
	if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
		t.Skipf("ns_last_pid: %v", err)
	}
	victim := exec.Command("/bin/sleep", "600")
	victim.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // an unrelated group leader
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = victim.Process.Kill() })
	if victim.Process.Pid != pid {
		t.Skipf("the victim got pid %d, not %d", victim.Process.Pid, pid)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	_ = victim.Process.Signal(syscall.SIGTERM)
	_ = victim.Wait()
	if ws := victim.ProcessState.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("the unrelated process group leader %d (the found leader's old pid) ended %v, not by the test's SIGTERM", victim.Process.Pid, victim.ProcessState)
	}
}
