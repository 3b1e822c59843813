package supervise

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// Fields 3.. after comm; field 22 (starttime) is the 20th of them.
	tail := "S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200"
	for _, comm := range []string{"sleep", "a b", "x) S 9 9 9 (y", ")", "((", "a)b) c"} {
		data := []byte(fmt.Sprintf("4242 (%s) %s\n", comm, tail))
		st, err := parseStat(data)
		if err != nil {
			t.Fatalf("comm %q: %v", comm, err)
		}
		if st.State != 'S' || st.PGrp != 4242 || st.StartTime != 987654 {
			t.Fatalf("comm %q: %+v, want state S pgrp 4242 start 987654", comm, st)
		}
	}
	for _, bad := range []string{"", "4242 sleep S 1", "4242 (x) S 1 2 3", "4242 (x) SS " + tail[2:], "4242 (x) S 1 x" + tail[5:]} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Fatalf("parseStat(%q) succeeded", bad)
		}
	}
	// The real file of this process parses, and its start time is stable
	// (its state is not: running or sleeping, as the scheduler has it).
	a, err := readProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := readProcStat(os.Getpid())
	if a.StartTime == 0 || a.StartTime != b.StartTime || a.PGrp != b.PGrp || a.PGrp != syscall.Getpgrp() {
		t.Fatalf("own stat %+v / %+v", a, b)
	}
}

// TestKillStaleSparesUnverifiedGroups: a live process group must survive
// KillStale whenever the PID file cannot prove it is the recorded one (after
// a reboot, after pid reuse, old bare-pgid files); the file is removed.
func TestKillStaleSparesUnverifiedGroups(t *testing.T) {
	boot, err := currentBootID()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		content func(pid int, rec PIDRecord) string
	}{
		{"old bare pgid", func(pid int, _ PIDRecord) string { return strconv.Itoa(pid) + "\n" }},
		{"other boot", func(pid int, rec PIDRecord) string {
			rec.BootID = "00000000-0000-0000-0000-000000000000"
			if rec.BootID == boot {
				rec.BootID = "11111111-1111-1111-1111-111111111111"
			}
			return string(rec.marshal())
		}},
		{"pid reused", func(pid int, rec PIDRecord) string {
			rec.StartTime++
			return string(rec.marshal())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, exited := startStale(t, "serve")
			rec, err := identify(pid)
			if err != nil {
				t.Fatal(err)
			}
			pidFile := filepath.Join(t.TempDir(), "svc.pid")
			if err := os.WriteFile(pidFile, []byte(tc.content(pid, rec)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := KillStale(pidFile, 200*time.Millisecond, testLogger(t)); err != nil {
				t.Fatalf("KillStale: %v", err)
			}
			if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pid file: %v, want removed", err)
			}
			// KillStale has returned: had it signalled the group, the helper
			// (which exits on SIGTERM) would be gone or going. Check it still
			// runs and has not exited.
			select {
			case err := <-exited:
				t.Fatalf("unverified group was killed: %v", err)
			default:
			}
			if !pidAlive(pid) {
				t.Fatalf("unverified group %d was killed", pid)
			}
		})
	}
}

// TestKillStaleAfterRebootSimulated points the boot id at another file: the
// very same live group, recorded before a "reboot", is left alone.
func TestKillStaleAfterRebootSimulated(t *testing.T) {
	pid, exited := startStale(t, "serve")
	pidFile := filepath.Join(t.TempDir(), "svc.pid")
	if _, err := WritePIDFile(pidFile, pid); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(t.TempDir(), "boot_id")
	if err := os.WriteFile(fake, []byte("22222222-2222-2222-2222-222222222222\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := bootIDPath
	bootIDPath = fake
	t.Cleanup(func() { bootIDPath = old })
	if err := KillStale(pidFile, 200*time.Millisecond, testLogger(t)); err != nil {
		t.Fatalf("KillStale: %v", err)
	}
	select {
	case err := <-exited:
		t.Fatalf("group from before the reboot was killed: %v", err)
	default:
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file: %v, want removed", err)
	}
}

// TestLateStopKeepsNewerPIDFile: an old supervisor that finishes stopping
// after a new one has started must not remove the new one's PID file.
func TestLateStopKeepsNewerPIDFile(t *testing.T) {
	a := helperConfig(t, "serve")
	b := helperConfig(t, "serve")
	b.PIDFile = a.PIDFile
	oldSup := New(a, testLogger(t))
	if err := oldSup.Start(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, a.LogPath, 1)
	newSup := New(b, testLogger(t))
	if err := newSup.Start(); err != nil {
		t.Fatal(err)
	}
	newPID := waitReady(t, b.LogPath, 1)[0]
	stop(t, oldSup)
	rec, err := ReadPIDFile(a.PIDFile)
	if err != nil {
		t.Fatalf("new supervisor's pid file removed by the old one: %v", err)
	}
	if rec.PGID != newPID {
		t.Fatalf("pid file names %d, want the new process %d", rec.PGID, newPID)
	}
	stop(t, newSup)
	if _, err := os.Stat(a.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after the new supervisor's clean stop: %v, want removed", err)
	}
}
