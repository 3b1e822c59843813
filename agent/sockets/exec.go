package sockets

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Environment variables of the socket-activation and notify conventions.
const (
	EnvListenPID      = "LISTEN_PID"
	EnvListenFDs      = "LISTEN_FDS"
	EnvListenFDNames  = "LISTEN_FDNAMES"
	EnvNotifySocket   = "NOTIFY_SOCKET"
	firstListenFD     = 3
	shell             = "/bin/sh"
	listenPIDTemplate = `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`
)

// Prepare sets cmd up to receive socks the systemd way: cmd.ExtraFiles are
// the sockets in order (fds 3, 4, ...), the environment has LISTEN_FDS and
// LISTEN_FDNAMES, and LISTEN_PID is the pid of the process itself. With
// notify (may be nil) NOTIFY_SOCKET is its path. Any LISTEN_* and
// NOTIFY_SOCKET variables already in cmd.Env (or, when cmd.Env is nil, in
// the agent's environment, which cmd then gets: an agent run by systemd
// with Type=notify has its own NOTIFY_SOCKET) are removed first.
//
// LISTEN_PID cannot be set by the agent: the pid is known only after fork
// and os/exec runs nothing between fork and exec. So cmd runs through
// /bin/sh, which exports its own pid and execs the program in its place
// (same pid, same process group, same fds):
//
//	/bin/sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"' PROGRAM ARGS...
//
// The program then sees its path as argv[0] (not cmd.Args[0]). So that a
// missing or non-executable program still fails at Start rather than as a
// shell's exit 127, Prepare checks it first.
//
// The caller must call release after cmd.Start (whether it succeeded or
// not): it closes the duplicates Prepare put in ExtraFiles; the sockets
// stay open. With no sockets Prepare only sets the environment.
func Prepare(cmd *exec.Cmd, socks []*Socket, notify *Notify) (release func(), err error) {
	noop := func() {}
	switch {
	case cmd.Err != nil:
		return nil, fmt.Errorf("prepare command: %w", cmd.Err)
	case cmd.Process != nil:
		return nil, errors.New("prepare command: already started")
	case len(cmd.ExtraFiles) > 0:
		return nil, fmt.Errorf("prepare command: it already has %d extra files; the sockets must be fds 3 and up", len(cmd.ExtraFiles))
	case cmd.Path == "":
		return nil, errors.New("prepare command: no program")
	}
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	env = withoutVars(env, EnvListenPID, EnvListenFDs, EnvListenFDNames, EnvNotifySocket)
	if notify != nil {
		env = append(env, EnvNotifySocket+"="+notify.Path())
	}
	if len(socks) == 0 {
		cmd.Env = env
		return noop, nil
	}
	prog, err := programPath(cmd.Path, cmd.Dir)
	if err != nil {
		return nil, fmt.Errorf("prepare command: %w", err)
	}
	files := make([]*os.File, 0, len(socks))
	release = func() {
		for _, f := range files {
			_ = f.Close()
		}
	}
	names := make([]string, 0, len(socks))
	for _, s := range socks {
		f, err := s.File()
		if err != nil {
			release()
			return nil, fmt.Errorf("prepare command: %w", err)
		}
		files = append(files, f)
		names = append(names, s.Name)
	}
	cmd.ExtraFiles = files
	cmd.Env = append(env,
		EnvListenFDs+"="+strconv.Itoa(len(socks)),
		EnvListenFDNames+"="+strings.Join(names, ":"))
	args := []string{"sh", "-c", listenPIDTemplate, prog}
	if len(cmd.Args) > 1 {
		args = append(args, cmd.Args[1:]...)
	}
	cmd.Path = shell
	cmd.Args = args
	return release, nil
}

// programPath returns path in a form the shell's exec runs as a file (with a
// slash, never taken for an option) after checking that it is an
// executable regular file; a relative path is relative to dir, as os/exec
// has it.
func programPath(path, dir string) (string, error) {
	full := path
	if !filepath.IsAbs(path) {
		full = filepath.Join(dir, path) // dir "" means the agent's directory
		if !strings.HasPrefix(path, "./") && !strings.HasPrefix(path, "../") {
			path = "./" + path
		}
	}
	fi, err := os.Stat(full)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s: not an executable file", full)
	}
	return path, nil
}

// withoutVars returns env without the variables named in keys.
func withoutVars(env []string, keys ...string) []string {
	out := make([]string, 0, len(env))
next:
	for _, kv := range env {
		for _, k := range keys {
			if strings.HasPrefix(kv, k+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}
