// Package state owns the agent's durable per-service state: one JSON file per
// service under <data-dir>/state/, written temp-file + fsync + rename + fsync
// of the directory, so a crash leaves either the old or the new file.
//
// What it stores is the lifecycle's own snapshot (lifecycle.Snapshot: phase,
// generation, current, last good and target release with their accepted
// assignments, and the watch of a HEALTHY release with the release before
// it, and whether current passed its checks); it decides nothing. Beside
// the snapshot a file holds the agent's Runtime record of the service: the
// identities of the listening sockets the agent holds for it and the notify
// socket of each of its processes, so that an agent started later gets them
// back. Files are format 2 (each release with its whole assignment; the
// runtime fields were added within format 2 and a file without them still
// loads, as one with them loads in an agent that does not know them);
// format 1 files, written by agents before the state stored the snapshot
// itself (versions by name, each version's assignment once under
// "releases"), are still read. It must not import the coordinator or etcd.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fleetwave/fleetwave/agent/lifecycle"
	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// ErrCorrupt is returned (wrapped, naming the path) for a state file that
// cannot be decoded or is inconsistent.
var ErrCorrupt = errors.New("corrupt state file")

// maxFileBytes bounds a state file read from disk.
const maxFileBytes = 16 << 20

// Format is the version of the files Save writes.
const Format = 2

// file is the JSON form of a lifecycle.Snapshot (format 2). Each release is
// its accepted assignment in protojson; absent means none.
type file struct {
	Format     int             `json:"format"`
	Service    string          `json:"service"`
	Phase      string          `json:"phase"`
	Generation int64           `json:"generation"`
	Reason     string          `json:"reason,omitempty"`
	Current    json.RawMessage `json:"current,omitempty"`
	LastGood   json.RawMessage `json:"last_good,omitempty"`
	Target     json.RawMessage `json:"target,omitempty"`
	WatchUntil time.Time       `json:"watch_until,omitzero"`
	Previous   json.RawMessage `json:"previous,omitempty"`
	// CurrentOK (added within format 2; absent in older files, read as
	// false): current passed its checks and was not restarted since.
	CurrentOK bool `json:"current_ok,omitempty"`
	// TargetEpoch (added within format 2; absent in older files, read as 0:
	// not recorded): the epoch of the process started for target by the
	// install under way.
	TargetEpoch uint64 `json:"target_epoch,omitempty"`
	// InPlace (added within format 2; absent in older files, read as
	// false): target was installed in place, no process started since.
	InPlace bool `json:"in_place,omitempty"`
	// LimitsUnknown (added within format 2; absent in older files, read as
	// 0: none): the epoch of the process a failed write of resource limits
	// (or a failed revert of a resize) left with limits of neither spec, or
	// of a kept process of a release the file names with another spec.
	LimitsUnknown uint64 `json:"limits_unknown,omitempty"`
	// Sockets and Notify (added within format 2; absent in older files):
	// the Runtime record.
	Sockets []sockets.Identity `json:"sockets,omitempty"`
	Notify  []NotifySocket     `json:"notify,omitempty"`
}

// Runtime is what the agent, not the lifecycle, records of a service so
// that an agent started later finds it again: the listening sockets it
// holds for the service (their identities, for sockets.Recover) and the
// notify socket of each running process (the NOTIFY_SOCKET that process
// was given, listened on again when it is adopted).
type Runtime struct {
	Sockets []sockets.Identity
	Notify  []NotifySocket
}

// NotifySocket is the notify socket (its path) of the process started
// with Epoch.
type NotifySocket struct {
	Epoch uint64 `json:"epoch"`
	Path  string `json:"path"`
}

// Saved is what one state file holds.
type Saved struct {
	Snapshot *lifecycle.Snapshot
	Runtime  Runtime
}

// ValidateRuntime checks a runtime record: socket names and addresses as
// run.sockets has them (after expansion), each with an inode, and notify
// sockets with an epoch and an absolute, clean path.
func ValidateRuntime(rt Runtime) error {
	names, inodes := map[string]bool{}, map[uint64]bool{}
	for i, id := range rt.Sockets {
		field := fmt.Sprintf("sockets[%d]", i)
		if err := spec.CheckSocketName(field+".name", id.Name); err != nil {
			return err
		}
		if _, _, err := spec.ParseListen(id.Listen); err != nil {
			return fmt.Errorf("%s.listen: %q: %w", field, id.Listen, err)
		}
		if id.Inode == 0 || inodes[id.Inode] || names[id.Name] {
			return fmt.Errorf("%s: no inode, or a name or inode twice", field)
		}
		names[id.Name], inodes[id.Inode] = true, true
	}
	for i, n := range rt.Notify {
		if n.Epoch == 0 || !filepath.IsAbs(n.Path) || filepath.Clean(n.Path) != n.Path || len(n.Path) > spec.MaxUnixPathLen {
			return fmt.Errorf("notify[%d]: epoch %d, path %q: want an epoch and an absolute clean path of at most %d bytes",
				i, n.Epoch, n.Path, spec.MaxUnixPathLen)
		}
	}
	return nil
}

// legacyFile is format 1 (no "format" key): releases named by version, and
// the assignment of every version named once under "releases".
type legacyFile struct {
	Service    string                     `json:"service"`
	Phase      string                     `json:"phase"`
	Generation int64                      `json:"generation"`
	Reason     string                     `json:"reason,omitempty"`
	Current    string                     `json:"current,omitempty"`
	LastGood   string                     `json:"last_good,omitempty"`
	Target     string                     `json:"target,omitempty"`
	WatchUntil time.Time                  `json:"watch_until,omitzero"`
	Previous   string                     `json:"previous,omitempty"`
	Releases   map[string]json.RawMessage `json:"releases,omitempty"`
}

// field is one release of a snapshot, named as in a file.
type field struct {
	name string
	a    **v1.Assignment
}

// fields are the snapshot's releases, in the order of the file's keys.
func fields(s *lifecycle.Snapshot) []field {
	return []field{{"current", &s.Current}, {"last_good", &s.LastGood}, {"target", &s.Target}, {"previous", &s.Previous}}
}

// Validate checks the names, the phase, and that every release is an
// assignment of the snapshot's service with a valid version.
func Validate(s *lifecycle.Snapshot) error {
	if err := spec.CheckName("service", s.Service); err != nil {
		return err
	}
	if _, ok := v1.Phase_name[int32(s.Phase)]; !ok || s.Phase == v1.Phase_PHASE_UNSPECIFIED {
		return fmt.Errorf("phase: invalid %d", s.Phase)
	}
	if s.Generation < 0 {
		return fmt.Errorf("generation: negative %d", s.Generation)
	}
	if s.Previous != nil && s.WatchUntil.IsZero() {
		return fmt.Errorf("previous: %q without watch_until", lifecycle.Version(s.Previous))
	}
	for _, r := range fields(s) {
		a := *r.a
		if a == nil {
			continue
		}
		if err := spec.CheckVersion(r.name+".release.version", lifecycle.Version(a)); err != nil {
			return err
		}
		if a.GetService() != s.Service {
			return fmt.Errorf("%s: release %q is for service %q, not %q", r.name, lifecycle.Version(a), a.GetService(), s.Service)
		}
	}
	return nil
}

// Marshal encodes a snapshot in the current format (without a runtime
// record).
func Marshal(s *lifecycle.Snapshot) ([]byte, error) {
	return MarshalWith(s, Runtime{})
}

// MarshalWith encodes a snapshot and the service's runtime record in the
// current format.
func MarshalWith(s *lifecycle.Snapshot, rt Runtime) ([]byte, error) {
	f := file{
		Format: Format, Service: s.Service, Phase: s.Phase.String(), Generation: s.Generation, Reason: s.Reason,
		WatchUntil: s.WatchUntil, CurrentOK: s.CurrentOK, TargetEpoch: s.TargetEpoch, InPlace: s.InPlace, LimitsUnknown: s.LimitsUnknown, Sockets: rt.Sockets, Notify: rt.Notify,
	}
	raws := []*json.RawMessage{&f.Current, &f.LastGood, &f.Target, &f.Previous}
	for i, r := range fields(s) {
		if *r.a == nil {
			continue
		}
		b, err := protojson.Marshal(*r.a)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.name, err)
		}
		*raws[i] = b
	}
	return json.MarshalIndent(f, "", "  ")
}

// Unmarshal decodes what Marshal wrote, or a format 1 file. It does not
// validate (see Validate). Releases of the same version with equal
// assignments are one *v1.Assignment, as they were in the machine.
func Unmarshal(b []byte) (*lifecycle.Snapshot, error) {
	s, _, err := UnmarshalWith(b)
	return s, err
}

// UnmarshalWith is Unmarshal that also returns the runtime record (empty
// in a format 1 file, and in a format 2 file written before it existed).
// It does not validate (see Validate and ValidateRuntime).
func UnmarshalWith(b []byte) (*lifecycle.Snapshot, Runtime, error) {
	var probe struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, Runtime{}, err
	}
	var s *lifecycle.Snapshot
	var rt Runtime
	var err error
	switch probe.Format {
	case 0:
		s, err = unmarshalLegacy(b)
	case Format:
		s, rt, err = unmarshalCurrent(b)
	default:
		return nil, Runtime{}, fmt.Errorf("format %d: unknown (this agent reads 1 and %d)", probe.Format, Format)
	}
	if err != nil {
		return nil, Runtime{}, err
	}
	share(s)
	return s, rt, nil
}

func unmarshalCurrent(b []byte) (*lifecycle.Snapshot, Runtime, error) {
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, Runtime{}, err
	}
	s, err := snapshot(f.Service, f.Phase, f.Generation, f.Reason, f.WatchUntil)
	if err != nil {
		return nil, Runtime{}, err
	}
	s.CurrentOK = f.CurrentOK
	s.TargetEpoch = f.TargetEpoch
	s.InPlace = f.InPlace
	s.LimitsUnknown = f.LimitsUnknown
	rt := Runtime{Sockets: f.Sockets, Notify: f.Notify}
	raws := []json.RawMessage{f.Current, f.LastGood, f.Target, f.Previous}
	for i, r := range fields(s) {
		if len(raws[i]) == 0 || string(raws[i]) == "null" {
			continue
		}
		if *r.a, err = unmarshalAssignment(raws[i]); err != nil {
			return nil, Runtime{}, fmt.Errorf("%s: %w", r.name, err)
		}
	}
	return s, rt, nil
}

func unmarshalLegacy(b []byte) (*lifecycle.Snapshot, error) {
	var f legacyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	s, err := snapshot(f.Service, f.Phase, f.Generation, f.Reason, f.WatchUntil)
	if err != nil {
		return nil, err
	}
	byVersion := map[string]*v1.Assignment{}
	for v, raw := range f.Releases {
		a, err := unmarshalAssignment(raw)
		if err != nil {
			return nil, fmt.Errorf("releases[%s]: %w", v, err)
		}
		if lifecycle.Version(a) != v {
			return nil, fmt.Errorf("releases[%s]: holds version %q", v, lifecycle.Version(a))
		}
		byVersion[v] = a
	}
	versions := []string{f.Current, f.LastGood, f.Target, f.Previous}
	for i, r := range fields(s) {
		v := versions[i]
		if v == "" {
			continue
		}
		if err := spec.CheckVersion(r.name, v); err != nil {
			return nil, err
		}
		if *r.a = byVersion[v]; *r.a == nil {
			return nil, fmt.Errorf("%s: no release recorded for version %q", r.name, v)
		}
	}
	return s, nil
}

// snapshot starts a snapshot from the fields both formats share.
func snapshot(service, phase string, gen int64, reason string, watchUntil time.Time) (*lifecycle.Snapshot, error) {
	p, ok := v1.Phase_value[phase]
	if !ok {
		return nil, fmt.Errorf("phase: unknown %q", phase)
	}
	return &lifecycle.Snapshot{
		Service: service, Phase: v1.Phase(p), Generation: gen, Reason: reason, WatchUntil: watchUntil,
	}, nil
}

func unmarshalAssignment(raw json.RawMessage) (*v1.Assignment, error) {
	a := &v1.Assignment{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, a); err != nil {
		return nil, err
	}
	return a, nil
}

// share makes releases with equal assignments one value.
func share(s *lifecycle.Snapshot) {
	var seen []*v1.Assignment
	for _, r := range fields(s) {
		if *r.a == nil {
			continue
		}
		for _, a := range seen {
			if proto.Equal(a, *r.a) {
				*r.a = a
				break
			}
		}
		seen = append(seen, *r.a)
	}
}

// Store reads and writes the state files in one directory.
type Store struct {
	dir string
}

// Open makes the directory if needed (mode 0700: its files hold the
// services' specs, run.env included, which no other user may read; one
// an older agent made 0755 is made 0700) and removes temp files left by a
// crash.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*.tmp*"))
	for _, p := range leftovers {
		os.Remove(p)
	}
	return &Store{dir: dir}, nil
}

// Path is the file of one service.
func (st *Store) Path(service string) string {
	return filepath.Join(st.dir, service+".json")
}

// Save writes the snapshot of one service durably (temp file, fsync,
// rename, fsync of the directory), in the current format, without a
// runtime record (see SaveWith).
func (st *Store) Save(s *lifecycle.Snapshot) error {
	return st.SaveWith(s, Runtime{})
}

// SaveWith writes the snapshot of one service and its runtime record
// durably, replacing both.
func (st *Store) SaveWith(s *lifecycle.Snapshot, rt Runtime) error {
	if err := Validate(s); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := ValidateRuntime(rt); err != nil {
		return fmt.Errorf("save state %s: %w", s.Service, err)
	}
	b, err := MarshalWith(s, rt)
	if err != nil {
		return fmt.Errorf("save state %s: %w", s.Service, err)
	}
	path := st.Path(s.Service)
	f, err := os.CreateTemp(st.dir, "."+s.Service+".tmp*")
	if err != nil {
		return fmt.Errorf("save state %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("save state %s: %w", path, err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o600); err != nil { // run.env: Open
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save state %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save state %s: %w", path, err)
	}
	d, err := os.Open(st.dir)
	if err != nil {
		return fmt.Errorf("save state %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("save state %s: fsync dir: %w", path, err)
	}
	return nil
}

// Load reads the snapshot of one service; a missing file is (nil, nil).
func (st *Store) Load(service string) (*lifecycle.Snapshot, error) {
	sv, err := st.LoadWith(service)
	if sv == nil {
		return nil, err
	}
	return sv.Snapshot, err
}

// LoadWith reads the snapshot and the runtime record of one service; a
// missing file is (nil, nil).
func (st *Store) LoadWith(service string) (*Saved, error) {
	if err := spec.CheckName("service", service); err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	return st.load(st.Path(service), service)
}

func (st *Store) load(path, service string) (*Saved, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load state %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("load state %s: %w", path, err)
	}
	if len(b) > maxFileBytes {
		return nil, fmt.Errorf("state file %s: over %d bytes: %w", path, maxFileBytes, ErrCorrupt)
	}
	s, rt, err := UnmarshalWith(b)
	if err != nil {
		return nil, fmt.Errorf("state file %s: %v: %w", path, err, ErrCorrupt)
	}
	if err := Validate(s); err != nil {
		return nil, fmt.Errorf("state file %s: %v: %w", path, err, ErrCorrupt)
	}
	if err := ValidateRuntime(rt); err != nil {
		return nil, fmt.Errorf("state file %s: %v: %w", path, err, ErrCorrupt)
	}
	if s.Service != service {
		return nil, fmt.Errorf("state file %s: holds service %q: %w", path, s.Service, ErrCorrupt)
	}
	return &Saved{Snapshot: s, Runtime: rt}, nil
}

// LoadAll reads every service's snapshot, sorted by service name. Any
// corrupt file is an error naming it.
func (st *Store) LoadAll() ([]*lifecycle.Snapshot, error) {
	all, err := st.LoadAllWith()
	if err != nil {
		return nil, err
	}
	out := make([]*lifecycle.Snapshot, len(all))
	for i, sv := range all {
		out[i] = sv.Snapshot
	}
	return out, nil
}

// LoadAllWith reads every service's snapshot and runtime record, sorted by
// service name. Any corrupt file is an error naming it.
func (st *Store) LoadAllWith() ([]*Saved, error) {
	entries, err := os.ReadDir(st.dir)
	if err != nil {
		return nil, fmt.Errorf("load state %s: %w", st.dir, err)
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || strings.HasPrefix(n, ".") || !strings.HasSuffix(n, ".json") {
			continue
		}
		names = append(names, strings.TrimSuffix(n, ".json"))
	}
	sort.Strings(names)
	var out []*Saved
	for _, n := range names {
		path := filepath.Join(st.dir, n+".json")
		if err := spec.CheckName("service", n); err != nil {
			return nil, fmt.Errorf("state file %s: %v: %w", path, err, ErrCorrupt)
		}
		s, err := st.load(path, n)
		if err != nil {
			return nil, err
		}
		if s != nil {
			out = append(out, s)
		}
	}
	return out, nil
}
