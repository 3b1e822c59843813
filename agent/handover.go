package agent

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/fleetwave/fleetwave/agent/sockets"
	"github.com/fleetwave/fleetwave/agent/state"
	"github.com/fleetwave/fleetwave/agent/supervise"
	"github.com/fleetwave/fleetwave/internal/spec"
	v1 "github.com/fleetwave/fleetwave/proto/fleetwave/v1"
)

// The handover's I/O (the policy is the lifecycle's): each process of a
// service is supervised on its own (two run during a handover), started
// on the service's listening sockets with a notify socket when its release
// says ready: notify, and stopped drained (its before_stop, an ActHook,
// then shutdown_delay, then the supervisor's SIGTERM and SIGKILL) when the
// machine says so.

// process is one supervised process of a service.
type process struct {
	epoch   uint64
	asg     *v1.Assignment
	sup     *supervise.Supervisor
	grace   time.Duration
	notify  *sockets.Notify // nil: its release is not ready: notify (or no notify socket could be made)
	listens []string        // the addresses of the sockets it was given
	stop    chan struct{}   // closed when it is stopped or detached: ends its forwarders
}

// foundProc is a process an earlier agent left running, found at start,
// until the machine adopts or stops it.
type foundProc struct {
	f     *supervise.Found
	asg   *v1.Assignment // its release as the state knows it (nil: unknown)
	grace time.Duration
}

// procs returns the service's processes by epoch (never nil).
func (s *service) processes() map[uint64]*process {
	if s.procs == nil {
		s.procs = map[uint64]*process{}
	}
	return s.procs
}

// sockSet returns the service's sockets (never nil).
func (s *service) sockSet() *socketSet {
	if s.socks == nil {
		s.socks = &socketSet{}
	}
	return s.socks
}

// takeProcess removes the process with epoch from the service's records
// and ends its forwarders; nil when there is none.
func (s *service) takeProcess(epoch uint64) *process {
	p := s.procs[epoch]
	if p == nil {
		return nil
	}
	delete(s.procs, epoch)
	close(p.stop)
	return p
}

// takeFound removes and returns the found process an action names: the one
// recorded with epoch, or, as the machine gives an unrecorded epoch a new
// one, the one without an epoch of version.
func (s *service) takeFound(epoch uint64, version string) *foundProc {
	i := slices.IndexFunc(s.found, func(f *foundProc) bool { return f.f.Record.Epoch == epoch })
	if i < 0 && version != "" {
		i = slices.IndexFunc(s.found, func(f *foundProc) bool {
			return f.f.Record.Epoch == 0 && f.f.Record.Release == version
		})
	}
	if i < 0 {
		return nil
	}
	f := s.found[i]
	s.found = slices.Delete(s.found, i, i+1)
	return f
}

// socketSet holds a service's listening sockets: bound once, passed to
// every process of the service and to each restart, kept across releases
// (matched by address) and recovered after an agent restart. Its methods
// are safe for concurrent use (supervisors call get on restarts).
type socketSet struct {
	mu    sync.Mutex
	socks []*sockets.Socket
}

// get returns the sockets for decls, in their order: the one held for
// each address (under the declared name), or one bound now. bound says
// whether it bound any.
func (ss *socketSet) get(decls []sockets.Decl) (out []*sockets.Socket, bound bool, err error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var fresh []*sockets.Socket
	for _, d := range decls {
		i := slices.IndexFunc(ss.socks, func(s *sockets.Socket) bool { return s.Listen == d.Listen })
		if i < 0 {
			b, err := sockets.Bind([]sockets.Decl{d})
			if err != nil {
				_ = sockets.CloseAll(fresh)
				return nil, false, err
			}
			fresh = append(fresh, b[0])
			out = append(out, b[0])
			continue
		}
		s := ss.socks[i]
		if s.Name != d.Name {
			r, err := s.Renamed(d.Name)
			if err != nil {
				_ = sockets.CloseAll(fresh)
				return nil, false, err
			}
			_ = s.Close() // the socket lives on in r (and in the processes)
			ss.socks[i] = r
			s = r
		}
		out = append(out, s)
	}
	ss.socks = append(ss.socks, fresh...)
	return out, len(fresh) > 0, nil
}

// set replaces the held sockets (after Recover).
func (ss *socketSet) set(socks []*sockets.Socket) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	_ = sockets.CloseAll(ss.socks)
	ss.socks = socks
}

// keepOnly closes the held sockets whose address is not in listens (no
// process uses them any more).
func (ss *socketSet) keepOnly(listens map[string]bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	kept := ss.socks[:0]
	for _, s := range ss.socks {
		if listens[s.Listen] {
			kept = append(kept, s)
			continue
		}
		_ = s.Close()
	}
	clear(ss.socks[len(kept):])
	ss.socks = kept
}

// identities are what the state records of the held sockets.
func (ss *socketSet) identities() []sockets.Identity {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var ids []sockets.Identity
	for _, s := range ss.socks {
		ids = append(ids, s.Identity())
	}
	return ids
}

// closeAll closes the agent's copies (the processes keep theirs).
func (ss *socketSet) closeAll() {
	ss.set(nil)
}

// socketDecls returns the expanded sockets of an assignment's run spec.
func (a *agent) socketDecls(asg *v1.Assignment) ([]sockets.Decl, error) {
	decls, err := sockets.FromSpec(asg.GetSpec().GetRun(), a.cfg.HostID, a.cfg.Labels)
	if err != nil {
		return nil, fmt.Errorf("spec.%w", err)
	}
	return decls, nil
}

func listensOf(decls []sockets.Decl) []string {
	out := make([]string, len(decls))
	for i, d := range decls {
		out[i] = d.Listen
	}
	return out
}

// prepareHook is the supervisor's Config.Prepare of a process given decls'
// sockets of the service's set and, when n is set, NOTIFY_SOCKET: every
// start and restart gets the sockets (bound again if need be: a restart
// after recovering them failed); n watches the first start's pid. When it
// binds a socket anew it asks the loop to record it (runtimeEv).
func (a *agent) prepareHook(svc string, ss *socketSet, decls []sockets.Decl, n *sockets.Notify) func(*exec.Cmd) (func(int), error) {
	if len(decls) == 0 && n == nil {
		return nil
	}
	var watch sync.Once
	return func(cmd *exec.Cmd) (func(int), error) {
		var socks []*sockets.Socket
		if len(decls) > 0 {
			var bound bool
			var err error
			if socks, bound, err = ss.get(decls); err != nil {
				return nil, err
			}
			if bound {
				a.background(func() { a.send(runtimeEv{svc: svc}) })
			}
		}
		release, err := sockets.Prepare(cmd, socks, n)
		if err != nil {
			return nil, err
		}
		return func(pid int) {
			release()
			if pid > 0 && n != nil {
				watch.Do(func() {
					if err := n.Watch(pid); err != nil {
						a.log.Warn().Str("service", svc).Err(err).Msg("notify socket")
					}
				})
			}
		}, nil
	}
}

// notifyDir is where the notify sockets of the services' processes live,
// and notifyUsersDir those of services that run as another user
// (run.user).
func (a *agent) notifyDir() string      { return filepath.Join(a.cfg.DataDir, "notify") }
func (a *agent) notifyUsersDir() string { return filepath.Join(a.cfg.DataDir, "notify-users") }

// makePrivateDir creates dir (and its parents) and makes sure it is a
// directory, not a link, owned by the agent's user, mode 0700: only the
// agent's user (and root) may reach the notify sockets inside.
func makePrivateDir(dir string) error { return makeNotifyDir(dir, 0o700) }

// makeNotifyDir is makePrivateDir with another mode: 0711 for the notify
// sockets of services that run as another user, who must pass through the
// directory to reach their socket (each 0600 and theirs) but may not list
// it, nor create anything in it (systemd's notify socket is reachable by
// everyone and trusts only the sender's credentials; these are reachable
// by their service's user alone, and check the sender's pid too).
func makeNotifyDir(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return err
	}
	fi, err := ownNotifyDir(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != mode {
		return os.Chmod(dir, mode)
	}
	return nil
}

// ownNotifyDir checks that dir is a directory (not a link to one) owned
// by the agent's user: under the shared temporary directory anyone may
// have made it first.
func ownNotifyDir(dir string) (os.FileInfo, error) {
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return nil, fmt.Errorf("%s: not a directory", dir)
	case ok && int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%s: owned by uid %d, not the agent's %d", dir, st.Uid, os.Geteuid())
	}
	return fi, nil
}

// notifyFallbackDir is the directory that holds the notify sockets of
// this data dir's services (shared: of those run as another user) when
// the data dir's own would make too long a path (notifyPath), under
// notifyFallbackBase.
func (a *agent) notifyFallbackDir(shared bool) string {
	tmp := "fleetwave-notify-"
	if shared {
		tmp = "fleetwave-notify-users-"
	}
	return filepath.Join(notifyFallbackBase(), tmp+shortHash(a.cfg.DataDir))
}

// notifyFallbackBase is where notifyFallbackDir goes: /run when the agent
// runs as root and it exists (only root may make a directory there), else
// the temporary directory, where any local user could make the agent's
// directory first (makeNotifyDir refuses one that is not the agent's, and
// the services that want notify sockets then fail to start). Tests
// replace it.
var notifyFallbackBase = func() string {
	if os.Geteuid() == 0 {
		if fi, err := os.Stat("/run"); err == nil && fi.IsDir() {
			return "/run"
		}
	}
	return os.TempDir()
}

// notifyTempLen is what sockets.ListenNotify adds to the directory for its
// temporary name ("/." + 12 hex digits + ".tmp").
const notifyTempLen = 18

// notifyPath chooses the notify socket of a service's process (epoch): in
// the data dir's notify/ directory, or, when that path would be longer
// than a Unix socket address holds, in a directory of the agent's own
// under the temporary directory, with a shorter name. It fails, naming
// the path, when neither fits.
//
// A service that runs as another user (shared) gets its sockets in
// notify-users/ (or a "-users" directory under the temporary one), mode
// 0711 (makeNotifyDir).
func (a *agent) notifyPath(svc string, epoch uint64, shared bool) (string, error) {
	fits := func(dir, name string) bool {
		return len(dir)+1+len(name) <= spec.MaxUnixPathLen && len(dir)+notifyTempLen <= spec.MaxUnixPathLen
	}
	dir, name, mode := a.notifyDir(), svc+"-"+strconv.FormatUint(epoch, 10), os.FileMode(0o700)
	if shared {
		dir, mode = a.notifyUsersDir(), 0o711
	}
	if !fits(dir, name) {
		long := filepath.Join(dir, name)
		dir = a.notifyFallbackDir(shared)
		name = shortHash(svc) + "-" + strconv.FormatUint(epoch, 10)
		if !fits(dir, name) {
			return "", fmt.Errorf("notify socket %s (and %s): longer than the %d bytes of a Unix socket address",
				long, filepath.Join(dir, name), spec.MaxUnixPathLen)
		}
	}
	if err := makeNotifyDir(dir, mode); err != nil {
		return "", fmt.Errorf("notify socket directory: %w", err)
	}
	return filepath.Join(dir, name), nil
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:4])
}

// listenNotify makes the notify socket of a service's process (epoch),
// which runs as run.user when set (the socket is then that user's), and
// records its path.
func (a *agent) listenNotify(s *service, epoch uint64, run *v1.RunSpec) (*sockets.Notify, error) {
	cred, err := credential(run)
	if err != nil {
		return nil, err
	}
	path, err := a.notifyPath(s.name, epoch, cred != nil)
	if err != nil {
		return nil, err
	}
	n, err := sockets.ListenNotify(filepath.Dir(path), filepath.Base(path), sockets.AccessMain, cred)
	if err != nil {
		return nil, err
	}
	s.notifyAt(epoch, path)
	return n, nil
}

// notifyAt records the notify socket of epoch's process ("" forgets it).
func (s *service) notifyAt(epoch uint64, path string) {
	if s.notify == nil {
		s.notify = map[uint64]string{}
	}
	if path == "" {
		delete(s.notify, epoch)
		return
	}
	s.notify[epoch] = path
}

// runtime is what the state records of the service besides the snapshot.
func (a *agent) runtime(s *service) state.Runtime {
	rt := state.Runtime{Sockets: s.sockSet().identities()}
	for epoch, path := range s.notify {
		rt.Notify = append(rt.Notify, state.NotifySocket{Epoch: epoch, Path: path})
	}
	slices.SortFunc(rt.Notify, func(x, y state.NotifySocket) int { return cmp.Compare(x.Epoch, y.Epoch) })
	return rt
}

// saveRuntime saves the runtime record with the snapshot last persisted,
// so that an agent started later finds the sockets and notify sockets.
func (a *agent) saveRuntime(s *service) error {
	if s.saved == nil {
		return nil // nothing persisted yet: nothing runs either
	}
	return a.store.SaveWith(s.saved, a.runtime(s))
}

// drainStop waits what comes before the stop signal of a process that
// served, once its release's before_stop ran (an ActHook the machine
// emits before the ActStop): its shutdown_delay. It returns ctx's error
// when the agent stops meanwhile (the process is then left running for the
// next agent). stop-services waits it too (stop.go).
func drainStop(ctx context.Context, asg *v1.Assignment) error {
	if d := asg.GetSpec().GetRun().GetShutdownDelay().AsDuration(); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// afterStop tidies up once a process of s is gone (or did not start): the
// one left in the handover's PID file takes the main one, the sockets no
// process uses are closed, and the runtime record is saved.
func (a *agent) afterStop(s *service) {
	a.takeMainPIDFile(s)
	listens := map[string]bool{}
	keepAll := false
	for _, p := range s.procs {
		for _, l := range p.listens {
			listens[l] = true
		}
	}
	for _, f := range s.found {
		if f.asg == nil {
			keepAll = true // what it holds is unknown
			continue
		}
		if decls, err := a.socketDecls(f.asg); err == nil {
			for _, d := range decls {
				listens[d.Listen] = true
			}
		}
	}
	if !keepAll {
		s.sockSet().keepOnly(listens)
	}
	if err := a.saveRuntime(s); err != nil {
		a.log.Error().Str("service", s.name).Err(err).Msg("saving the service's sockets and notify sockets")
	}
}

// takeMainPIDFile moves the record of a process of s left in the
// handover's PID file to the main one when no process of s (supervised, or
// found at Restore and not yet adopted or stopped) holds the main one: at
// the end of a handover, and when an agent adopts the new process of a
// handover whose old process exited while no agent ran (else the next
// handover would write its new process over that record).
func (a *agent) takeMainPIDFile(s *service) {
	main := a.pidFile(s.name)
	if slices.ContainsFunc(s.found, func(f *foundProc) bool { return f.f.PIDFile() == main }) {
		return
	}
	for _, p := range s.procs {
		if p.sup.PIDFile() == main {
			return
		}
	}
	for _, p := range s.procs {
		if err := p.sup.MovePIDFile(main); err != nil {
			a.log.Error().Str("service", s.name).Err(err).Msg("moving the pid file of the process that took over")
		}
		break
	}
}

// errNothingToStop is the error of an ActStop whose process is not known.
var errNothingToStop = errors.New("no such process")
