package tlsutil

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Defaults for Init.
const (
	DefaultTTL   = 365 * 24 * time.Hour      // issued certificates
	DefaultCATTL = 10 * 365 * 24 * time.Hour // the CA
	// CACommonName is the subject of the CA that Init creates.
	CACommonName = "fleetwave CA"
	// JoinCACommonName is the subject of the join CA (an intermediate).
	JoinCACommonName = "fleetwave join CA"
)

// File names Init writes in its directory: the root CA (its key is to be
// kept offline) and the join CA, an intermediate that can sign agent
// certificates only (coordinators that serve Join get it).
const (
	CAFile        = "ca.pem"
	CAKeyFile     = "ca-key.pem"
	JoinCAFile    = "join-ca.pem"
	JoinCAKeyFile = "join-ca-key.pem"
)

// ErrExists is returned (wrapped) by Init when the directory already holds a
// CA and Force is not set.
var ErrExists = errors.New("already exists")

// InitOptions says which certificates Init issues.
type InitOptions struct {
	// Coordinators maps each coordinator name to the extra host names and
	// IP addresses its certificate names; localhost, 127.0.0.1 and ::1 are
	// always added.
	Coordinators map[string][]string
	// Agents are host ids.
	Agents []string
	// Operators maps each operator name to its role.
	Operators map[string]string
	// TTL is the validity of issued certificates (DefaultTTL when zero);
	// CATTL that of the CA (DefaultCATTL when zero); JoinCATTL that of the
	// join CA (DefaultJoinCATTL when zero; never past the CA's).
	TTL, CATTL, JoinCATTL time.Duration
	// Force allows replacing an existing ca.pem (and every other file).
	Force bool
}

// InitFile is one file Init writes: its name inside the directory, its mode
// and, for certificates and keys issued to an identity, that identity (zero
// for the CAs' files).
type InitFile struct {
	Name     string
	Mode     fs.FileMode
	Identity Identity
	Hosts    []string // server names in a coordinator's certificate
	Key      bool     // a private key
	JoinCA   bool     // the join CA's certificate or key
}

// caFiles are the first files Init writes.
const caFiles = 4

// Files lists what Init writes for these options, in the order it writes
// them: the CA, the join CA, then coordinators, agents and operators, each
// sorted by name. It does not validate the options.
func (o InitOptions) Files() []InitFile {
	files := []InitFile{
		{Name: CAFile, Mode: 0o644},
		{Name: CAKeyFile, Mode: 0o600, Key: true},
		{Name: JoinCAFile, Mode: 0o644, JoinCA: true},
		{Name: JoinCAKeyFile, Mode: 0o600, Key: true, JoinCA: true},
	}
	add := func(id Identity, hosts []string) {
		base := id.Kind + "-" + id.Name
		files = append(files,
			InitFile{Name: base + ".pem", Mode: 0o644, Identity: id, Hosts: hosts},
			InitFile{Name: base + "-key.pem", Mode: 0o600, Identity: id, Key: true},
		)
	}
	for _, name := range sortedKeys(o.Coordinators) {
		add(Identity{Kind: KindCoordinator, Name: name}, coordinatorHosts(o.Coordinators[name]))
	}
	agents := slices.Clone(o.Agents)
	slices.Sort(agents)
	for _, h := range slices.Compact(agents) {
		add(Identity{Kind: KindAgent, Name: h}, nil)
	}
	for _, name := range sortedKeys(o.Operators) {
		add(Identity{Kind: KindOperator, Name: name, Role: o.Operators[name]}, nil)
	}
	return files
}

func coordinatorHosts(extra []string) []string {
	hosts := slices.Clone(extra)
	for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Init writes a CA and certificates for a small fleet into dir (created with
// mode 0700 when missing): ca.pem and ca-key.pem (the root: keep its key
// offline), join-ca.pem and join-ca-key.pem (see NewJoinCA), then for each coordinator
// NAME coordinator-NAME.pem and coordinator-NAME-key.pem (naming its hosts
// plus localhost, 127.0.0.1 and ::1), agent-HOST.pem/-key.pem and
// operator-NAME.pem/-key.pem (the role in the identity). Keys are written
// with mode 0600, certificates 0644, each through a temporary file and a
// rename. Every option is validated before anything is written. It refuses
// to replace an existing ca.pem unless opts.Force.
func Init(dir string, opts InitOptions) error {
	if dir == "" {
		return errors.New("tls init: no directory given")
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	if opts.CATTL == 0 {
		opts.CATTL = DefaultCATTL
	}
	if opts.JoinCATTL == 0 {
		opts.JoinCATTL = DefaultJoinCATTL
	}
	if err := checkTTL(opts.TTL); err != nil {
		return fmt.Errorf("tls init: certificate %w", err)
	}
	if err := checkTTL(opts.CATTL); err != nil {
		return fmt.Errorf("tls init: CA %w", err)
	}
	if err := checkTTL(opts.JoinCATTL); err != nil {
		return fmt.Errorf("tls init: join CA %w", err)
	}
	files := opts.Files()
	for _, f := range files {
		if f.Identity == (Identity{}) {
			continue
		}
		if err := f.Identity.Validate(); err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
		for _, h := range f.Hosts {
			if err := ValidHost(h); err != nil {
				return fmt.Errorf("tls init: %s: %w", f.Identity, err)
			}
		}
	}
	caPath := filepath.Join(dir, CAFile)
	if !opts.Force {
		if _, err := os.Lstat(caPath); err == nil {
			return fmt.Errorf("tls init: %s: %w", caPath, ErrExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("tls init: %s: %w", caPath, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tls init: %w", err)
	}
	ca, err := NewCA(CACommonName, opts.CATTL)
	if err != nil {
		return fmt.Errorf("tls init: %w", err)
	}
	caKeyPEM, err := marshalKeyPEM(ca)
	if err != nil {
		return fmt.Errorf("tls init: %w", err)
	}
	// Write the CA key before the CA certificate: a run that fails half way
	// leaves no ca.pem without its key.
	if err := WriteFileAtomic(filepath.Join(dir, CAKeyFile), caKeyPEM, 0o600); err != nil {
		return fmt.Errorf("tls init: %w", err)
	}
	if err := WriteFileAtomic(caPath, ca.CertPEM, 0o644); err != nil {
		return fmt.Errorf("tls init: %w", err)
	}
	if err := writeJoinCA(dir, ca, opts.JoinCATTL); err != nil {
		return fmt.Errorf("tls init: %w", err)
	}
	for i := caFiles; i+1 < len(files); i += 2 {
		cf, kf := files[i], files[i+1]
		certPEM, keyPEM, err := ca.IssueKeyPair(cf.Identity, cf.Hosts, opts.TTL)
		if err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
		if err := WriteKeyPair(filepath.Join(dir, cf.Name), filepath.Join(dir, kf.Name), certPEM, keyPEM); err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
	}
	return nil
}

// InitJoinCA makes a new join CA in dir (join-ca.pem, join-ca-key.pem)
// from the root there (ca.pem, ca-key.pem), replacing an existing one:
// when the join CA expires or its key may have leaked (then revoke the old
// one's serial too). Certificates the old one issued stay valid until they
// expire or are revoked. ttl 0 is DefaultJoinCATTL.
func InitJoinCA(dir string, ttl time.Duration) error {
	if ttl == 0 {
		ttl = DefaultJoinCATTL
	}
	if err := checkTTL(ttl); err != nil {
		return fmt.Errorf("tls join-ca: %w", err)
	}
	root, err := LoadCA(filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		return fmt.Errorf("tls join-ca: %w", err)
	}
	if err := writeJoinCA(dir, root, ttl); err != nil {
		return fmt.Errorf("tls join-ca: %w", err)
	}
	return nil
}

func writeJoinCA(dir string, root *CA, ttl time.Duration) error {
	jca, err := root.NewJoinCA(JoinCACommonName, ttl)
	if err != nil {
		return err
	}
	keyPEM, err := marshalKeyPEM(jca)
	if err != nil {
		return err
	}
	return WriteKeyPair(filepath.Join(dir, JoinCAFile), filepath.Join(dir, JoinCAKeyFile), jca.CertPEM, keyPEM)
}

func marshalKeyPEM(ca *CA) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	return pemEncode("PRIVATE KEY", der), nil
}

// WriteKeyPair writes a key (mode 0600) and then its certificate (mode
// 0644), each atomically, so that a process re-reading them (ServerConfig,
// ClientConfig) sees either the old or the new file, never a partial one.
func WriteKeyPair(certFile, keyFile string, certPEM, keyPEM []byte) error {
	if err := WriteFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(certFile, certPEM, 0o644)
}

// AtomicTemp is the temporary file WriteFileAtomic writes file through: an
// os.CreateTemp pattern beside it. file may be a glob ("tls/*"): the result
// then matches the temporary files of them all, which a kill in the middle
// of a write leaves (for a start-up to remove).
func AtomicTemp(file string) string {
	return filepath.Join(filepath.Dir(file), "."+filepath.Base(file)+".tmp*")
}

// WriteFileAtomic writes data to a temporary file in file's directory
// (AtomicTemp) with mode perm, syncs it, and renames it over file.
func WriteFileAtomic(file string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(file)
	tmp, err := os.CreateTemp(dir, filepath.Base(AtomicTemp(file)))
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err = os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
