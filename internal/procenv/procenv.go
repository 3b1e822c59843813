// Package procenv is the environment of every process the agent starts
// for a service (the service itself, its hooks, its exec checks) and the
// lookup of its program: the same whoever starts it, the agent (as a
// systemd unit, say) or `fleetwave-agent stop-services` run from an
// operator's shell. Nothing of the starting process's environment gets
// through: a root shell with a user's PATH does not change which program
// a hook runs.
package procenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Path is the PATH of every such process (systemd's default for
// services, with /sbin and /bin); a service's run.env can set another.
const Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Env is the environment of a process started in dir: PATH (Path), HOME
// (dir), then extra (KEY=VALUE: the service's run.env and, for a hook, its
// FLEETWAVE_* variables; a later PATH or HOME wins).
func Env(dir string, extra []string) []string {
	return append([]string{"PATH=" + Path, "HOME=" + dir}, extra...)
}

// Program is the file to execute for a command's first word name, run in
// dir with env (Env's): `./x` in dir, a name with a slash as it is, a bare
// name looked up in env's PATH (its last, as the process sees it; its
// relative entries skipped), never the caller's.
func Program(name, dir string, env []string) (string, error) {
	if strings.HasPrefix(name, "./") {
		return filepath.Join(dir, name), nil
	}
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		if !filepath.IsAbs(d) {
			continue
		}
		f := filepath.Join(d, name)
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return f, nil
		}
	}
	return "", fmt.Errorf("%q: no such executable in PATH %q", name, path)
}
