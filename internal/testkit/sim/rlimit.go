package sim

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises this process's soft limit of open files to its hard
// limit (children started afterwards inherit it) and returns the new soft
// limit. Every simulated host holds one socket.
func RaiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= lim.Max {
		return lim.Cur, nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("set RLIMIT_NOFILE to %d: %w", lim.Max, err)
	}
	return lim.Cur, nil
}

// RaiseFileLimitTo raises the soft limit of open files to at least want,
// raising the hard limit too when it is lower (which takes root, or
// CAP_SYS_RESOURCE, and stays within fs.nr_open), and returns the new soft
// limit. Without the privilege it raises what it can and returns that.
func RaiseFileLimitTo(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	if lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
	}
	return RaiseFileLimit()
}
