package supervise

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// PID file format, version 2 (small, line-based, versioned):
//
//	fleetwave-pid 2
//	pgid 12345
//	boot_id 5f0c2a5e-...
//	start_time 4242424
//	release 1.4.2
//	epoch 3
//
// boot_id is /proc/sys/kernel/random/boot_id when the file was written and
// start_time is field 22 of /proc/<pgid>/stat (the group leader's start
// time in clock ticks since boot). Together they identify the process group
// across pid reuse and reboots. release and epoch (optional: files of older
// agents lack them) say what runs: the release version and the epoch of
// the lifecycle's start it belongs to. Unknown keys are ignored. Version 1
// was a bare process group id; it cannot be verified, so FindRunning never
// adopts it (nor signals it).
const pidFileMagic = "fleetwave-pid 2"

// ErrInvalidPIDFile marks a PID file that does not hold a usable record.
var ErrInvalidPIDFile = errors.New("invalid pid file")

// maxPIDFileBytes bounds what is read from a PID file.
const maxPIDFileBytes = 4096

// Paths of the kernel files the PID file is checked against (variables so
// tests can point them elsewhere).
var (
	bootIDPath = "/proc/sys/kernel/random/boot_id"
	procDir    = "/proc"
)

// errOldPIDFile marks a version-1 (bare pgid) PID file.
var errOldPIDFile = errors.New("pid file without boot id and start time")

// PIDRecord is what a PID file says about the process group it names.
type PIDRecord struct {
	PGID      int    // process group id (= pid of the group leader)
	BootID    string // boot id of the kernel the group ran under
	StartTime uint64 // start time of the leader, clock ticks after boot
	Release   string // release version it runs ("" = not recorded)
	Epoch     uint64 // epoch of the start it belongs to (0 = not recorded)
}

// maxReleaseLen bounds the release recorded in a PID file.
const maxReleaseLen = 128

// pidFileMu serialises writing a PID file with the compare-and-remove of a
// stopping supervisor, so an old supervisor can never remove a file a new
// one has just written. (One agent owns a data dir, so in-process is enough.)
var pidFileMu sync.Mutex

// currentBootID returns the running kernel's boot id.
func currentBootID() (string, error) {
	b, err := readLimited(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" || strings.ContainsAny(id, " \t\n") {
		return "", fmt.Errorf("boot id: unexpected content of %s", bootIDPath)
	}
	return id, nil
}

// procStat is the part of /proc/<pid>/stat the supervisor uses.
type procStat struct {
	State     byte
	PGrp      int
	StartTime uint64
}

// readProcStat reads and parses /proc/<pid>/stat.
func readProcStat(pid int) (procStat, error) {
	b, err := readLimited(filepath.Join(procDir, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// parseStat parses the contents of /proc/<pid>/stat. The comm field (2) is
// in parentheses and may itself hold spaces and parentheses, so fields are
// split after the last ')'.
func parseStat(data []byte) (procStat, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, errors.New("stat: no ')' after comm")
	}
	// fields[0] is field 3 (state), so field n is fields[n-3].
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 22-3+1 || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("stat: %d fields after comm, want at least 20", len(fields))
	}
	pgrp, err := strconv.Atoi(fields[5-3])
	if err != nil {
		return procStat{}, fmt.Errorf("stat: pgrp: %w", err)
	}
	start, err := strconv.ParseUint(fields[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat: starttime: %w", err)
	}
	return procStat{State: fields[0][0], PGrp: pgrp, StartTime: start}, nil
}

// identify returns the record for the group led by pid (which must be
// alive or a zombie not yet reaped).
func identify(pid int) (PIDRecord, error) {
	boot, err := currentBootID()
	if err != nil {
		return PIDRecord{}, err
	}
	st, err := readProcStat(pid)
	if err != nil {
		return PIDRecord{}, fmt.Errorf("start time of %d: %w", pid, err)
	}
	return PIDRecord{PGID: pid, BootID: boot, StartTime: st.StartTime}, nil
}

func (r PIDRecord) marshal() []byte {
	b := fmt.Appendf(nil, "%s\npgid %d\nboot_id %s\nstart_time %d\n", pidFileMagic, r.PGID, r.BootID, r.StartTime)
	if r.Release != "" {
		b = fmt.Appendf(b, "release %s\n", r.Release)
	}
	if r.Epoch != 0 {
		b = fmt.Appendf(b, "epoch %d\n", r.Epoch)
	}
	return b
}

// checkRelease refuses a release that the line format cannot carry.
func checkRelease(v string) error {
	if len(v) > maxReleaseLen || strings.ContainsAny(v, " \t\r\n") {
		return fmt.Errorf("release %q: want at most %d bytes without whitespace", truncate(v, 32), maxReleaseLen)
	}
	return nil
}

// parsePIDFile parses a PID file. A bare process group id (version 1)
// returns the pgid with errOldPIDFile; anything else unusable returns
// ErrInvalidPIDFile.
func parsePIDFile(data []byte) (PIDRecord, error) {
	text := strings.TrimSpace(string(data))
	if n, err := strconv.Atoi(text); err == nil {
		if n <= 1 {
			return PIDRecord{}, fmt.Errorf("pgid %d: %w", n, ErrInvalidPIDFile)
		}
		return PIDRecord{PGID: n}, errOldPIDFile
	}
	lines := strings.Split(text, "\n")
	if strings.TrimSpace(lines[0]) != pidFileMagic {
		return PIDRecord{}, fmt.Errorf("unknown format %q: %w", truncate(lines[0], 32), ErrInvalidPIDFile)
	}
	var r PIDRecord
	var havePGID, haveStart bool
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
		v = strings.TrimSpace(v)
		switch k {
		case "pgid":
			n, err := strconv.Atoi(v)
			if err != nil {
				return PIDRecord{}, fmt.Errorf("pgid %q: %w", truncate(v, 32), ErrInvalidPIDFile)
			}
			r.PGID, havePGID = n, true
		case "boot_id":
			r.BootID = v
		case "start_time":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return PIDRecord{}, fmt.Errorf("start_time %q: %w", truncate(v, 32), ErrInvalidPIDFile)
			}
			r.StartTime, haveStart = n, true
		case "release":
			if checkRelease(v) != nil {
				return PIDRecord{}, fmt.Errorf("release %q: %w", truncate(v, 32), ErrInvalidPIDFile)
			}
			r.Release = v
		case "epoch":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return PIDRecord{}, fmt.Errorf("epoch %q: %w", truncate(v, 32), ErrInvalidPIDFile)
			}
			r.Epoch = n
		}
	}
	if !havePGID || r.PGID <= 1 || r.BootID == "" || !haveStart {
		return PIDRecord{}, fmt.Errorf("missing or bad pgid, boot_id or start_time: %w", ErrInvalidPIDFile)
	}
	return r, nil
}

// ReadPIDFile reads a PID file written by a Supervisor. A file in the old
// bare-pgid format, or one that does not parse, is an error wrapping
// ErrInvalidPIDFile.
func ReadPIDFile(path string) (PIDRecord, error) {
	b, err := readLimited(path)
	if err != nil {
		return PIDRecord{}, fmt.Errorf("read pid file %s: %w", path, err)
	}
	r, err := parsePIDFile(b)
	if errors.Is(err, errOldPIDFile) {
		err = fmt.Errorf("%w: %w", err, ErrInvalidPIDFile)
	}
	if err != nil {
		return PIDRecord{}, fmt.Errorf("pid file %s: %w", path, err)
	}
	return r, nil
}

// WritePIDFile records the process group led by pgid (alive or an unreaped
// zombie) in path, with the boot id and the leader's start time, atomically:
// temp file in the same directory, fsync, rename, fsync of the directory.
func WritePIDFile(path string, pgid int) (PIDRecord, error) {
	return WritePIDRecord(path, pgid, "", 0)
}

// WritePIDRecord is WritePIDFile that also records the release the group
// runs and the epoch of its start.
func WritePIDRecord(path string, pgid int, release string, epoch uint64) (PIDRecord, error) {
	pidFileMu.Lock()
	defer pidFileMu.Unlock()
	return writePIDRecordLocked(path, pgid, release, epoch)
}

// writePIDRecordLocked is WritePIDRecord with pidFileMu held.
func writePIDRecordLocked(path string, pgid int, release string, epoch uint64) (PIDRecord, error) {
	if err := checkRelease(release); err != nil {
		return PIDRecord{}, fmt.Errorf("write pid file %s: %w", path, err)
	}
	r, err := identify(pgid)
	if err != nil {
		return PIDRecord{}, fmt.Errorf("write pid file %s: %w", path, err)
	}
	r.Release, r.Epoch = release, epoch
	return r, writeFileAtomic(path, r.marshal())
}

// removePIDFileIf removes path only if it still names the group of r.
// It reports whether it removed the file.
func removePIDFileIf(path string, r PIDRecord) (bool, error) {
	pidFileMu.Lock()
	defer pidFileMu.Unlock()
	return removePIDFileIfLocked(path, r)
}

// removePIDFileIfLocked is removePIDFileIf with pidFileMu held.
func removePIDFileIfLocked(path string, r PIDRecord) (bool, error) {
	b, err := readLimited(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	got, err := parsePIDFile(b)
	if err != nil || got != r {
		return false, nil // someone else's (or unreadable): not ours to remove
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	return true, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxPIDFileBytes))
}

// PIDFileTemp is the temp file a PID file at path is written through: an
// os.CreateTemp pattern beside it. path may be a glob ("run/*.pid"): the
// result then matches the temp files of them all, which a kill in the
// middle of a write leaves (the agent's start-up removes them).
func PIDFileTemp(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
}

// writeFileAtomic writes data to path: temp file in the same directory
// (PIDFileTemp), fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(PIDFileTemp(path)))
	if err != nil {
		return fmt.Errorf("write pid file %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write pid file %s: %w", path, err)
	}
	syncDir(dir)
	return nil
}

// syncDir fsyncs a directory (best effort), so that a rename in it is
// durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
