package supervise

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
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
