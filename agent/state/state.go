// Package state owns the agent's durable per-service state: one JSON file per
// service under <data-dir>/state/, written temp-file + fsync + rename + fsync
// of the directory, so a crash leaves either the old or the new file.
//
// It stores what the lifecycle needs after a restart (phase, generation,
// current, last good and target release with their accepted assignments,
// and the watch of a HEALTHY release with the release before it) and
// decides nothing. It must not import the coordinator or etcd.
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

	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// ErrCorrupt is returned (wrapped, naming the path) for a state file that
// cannot be decoded or is inconsistent.
var ErrCorrupt = errors.New("corrupt state file")

// maxFileBytes bounds a state file read from disk.
const maxFileBytes = 16 << 20

// Service is the durable state of one service.
type Service struct {
	Service    string   `json:"service"`
	Phase      v1.Phase `json:"-"`
	Generation int64    `json:"generation"`
	Reason     string   `json:"reason,omitempty"`
	// Versions; "" = none.
	Current  string `json:"current,omitempty"`
	LastGood string `json:"last_good,omitempty"`
	Target   string `json:"target,omitempty"`
	// WatchUntil is when the watch of a HEALTHY release ends (zero: not
	// watching); Previous is the release a revert during it returns to.
	WatchUntil time.Time `json:"watch_until,omitzero"`
	Previous   string    `json:"previous,omitempty"`
	// Releases holds the accepted assignment (release + spec) of every
	// version named above.
	Releases map[string]*v1.Assignment `json:"-"`
}

// file is the JSON form of Service.
type file struct {
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

// Assignment returns the accepted assignment of a version (nil for "").
func (s *Service) Assignment(version string) *v1.Assignment {
	if version == "" {
		return nil
	}
	return s.Releases[version]
}

// Validate checks names and that every version named has its assignment.
func (s *Service) Validate() error {
	if err := spec.CheckName("service", s.Service); err != nil {
		return err
	}
	if _, ok := v1.Phase_name[int32(s.Phase)]; !ok || s.Phase == v1.Phase_PHASE_UNSPECIFIED {
		return fmt.Errorf("phase: invalid %d", s.Phase)
	}
	if s.Generation < 0 {
		return fmt.Errorf("generation: negative %d", s.Generation)
	}
	if s.Previous != "" && s.WatchUntil.IsZero() {
		return fmt.Errorf("previous: %q without watch_until", s.Previous)
	}
	for field, v := range map[string]string{"current": s.Current, "last_good": s.LastGood, "target": s.Target, "previous": s.Previous} {
		if v == "" {
			continue
		}
		if err := spec.CheckVersion(field, v); err != nil {
			return err
		}
		a := s.Releases[v]
		if a == nil {
			return fmt.Errorf("%s: no release recorded for version %q", field, v)
		}
		if a.GetRelease().GetVersion() != v {
			return fmt.Errorf("releases[%s]: holds version %q", v, a.GetRelease().GetVersion())
		}
		if a.GetService() != s.Service {
			return fmt.Errorf("releases[%s]: for service %q, not %q", v, a.GetService(), s.Service)
		}
	}
	return nil
}

// MarshalJSON encodes the assignments with protojson.
func (s *Service) MarshalJSON() ([]byte, error) {
	f := file{
		Service: s.Service, Phase: s.Phase.String(), Generation: s.Generation, Reason: s.Reason,
		Current: s.Current, LastGood: s.LastGood, Target: s.Target,
		WatchUntil: s.WatchUntil, Previous: s.Previous,
	}
	for _, v := range []string{s.Current, s.LastGood, s.Target, s.Previous} {
		a := s.Releases[v]
		if v == "" || a == nil {
			continue
		}
		if f.Releases == nil {
			f.Releases = map[string]json.RawMessage{}
		}
		b, err := protojson.Marshal(a)
		if err != nil {
			return nil, fmt.Errorf("releases[%s]: %w", v, err)
		}
		f.Releases[v] = b
	}
	return json.MarshalIndent(f, "", "  ")
}

// UnmarshalJSON decodes what MarshalJSON wrote.
func (s *Service) UnmarshalJSON(b []byte) error {
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	p, ok := v1.Phase_value[f.Phase]
	if !ok {
		return fmt.Errorf("phase: unknown %q", f.Phase)
	}
	*s = Service{
		Service: f.Service, Phase: v1.Phase(p), Generation: f.Generation, Reason: f.Reason,
		Current: f.Current, LastGood: f.LastGood, Target: f.Target,
		WatchUntil: f.WatchUntil, Previous: f.Previous,
	}
	for v, raw := range f.Releases {
		a := &v1.Assignment{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, a); err != nil {
			return fmt.Errorf("releases[%s]: %w", v, err)
		}
		if s.Releases == nil {
			s.Releases = map[string]*v1.Assignment{}
		}
		s.Releases[v] = a
	}
	return nil
}

// Store reads and writes the state files in one directory.
type Store struct {
	dir string
}

// Open makes the directory if needed and removes temp files left by a crash.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
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

// Save writes the state of one service durably (temp file, fsync, rename,
// fsync of the directory).
func (st *Store) Save(s *Service) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	b, err := json.Marshal(s)
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
	if err := f.Chmod(0o644); err != nil {
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

// Load reads the state of one service; a missing file is (nil, nil).
func (st *Store) Load(service string) (*Service, error) {
	if err := spec.CheckName("service", service); err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	return st.load(st.Path(service), service)
}

func (st *Store) load(path, service string) (*Service, error) {
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
	var s Service
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state file %s: %v: %w", path, err, ErrCorrupt)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("state file %s: %v: %w", path, err, ErrCorrupt)
	}
	if s.Service != service {
		return nil, fmt.Errorf("state file %s: holds service %q: %w", path, s.Service, ErrCorrupt)
	}
	return &s, nil
}

// LoadAll reads every service's state, sorted by service name. Any corrupt
// file is an error naming it.
func (st *Store) LoadAll() ([]*Service, error) {
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
	var out []*Service
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
