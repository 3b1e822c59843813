package supervise

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
)

// RotateLog bounds one service log by size with copy-truncate: when the
// file at path holds at least maxBytes, path.1 … path.(keep-1) move up by
// one (path.keep is dropped), the file's last maxBytes bytes are copied to
// path.1 and the file is truncated to zero. The service keeps writing to
// the file it opened O_APPEND: its next write lands at the new end, so it
// never needs to know. What it writes between the copy and the truncation
// is lost (a moment's output, once per rotation); that is the price of not
// signalling it.
//
// A log over maxBytes (it grew while no agent ran) keeps only its last
// maxBytes bytes in path.1 (its first line there may be cut), and a copy
// that fails (the disk is full: the log can be larger than the free space)
// leaves no temp file and still truncates the log: the old lines are lost
// rather than the disk filled. Disk use per log is therefore bounded by
// (keep+1) × maxBytes plus what the service writes between two calls.
// keep 0 keeps no old files.
//
// It reports whether it truncated the log. An error with true is a failed
// copy: the log was truncated all the same, without path.1. maxBytes <= 0
// disables rotation.
func RotateLog(path string, maxBytes int64, keep int) (bool, error) {
	if maxBytes <= 0 {
		return false, nil
	}
	if keep < 0 {
		return false, fmt.Errorf("rotate %s: keep %d is negative", path, keep)
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("rotate %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() < maxBytes {
		return false, nil
	}
	var copyErr error
	if keep > 0 {
		old := func(n int) string { return path + "." + strconv.Itoa(n) }
		if err := os.Remove(old(keep)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("rotate %s: %w", path, err)
		}
		for n := keep - 1; n >= 1; n-- {
			if err := os.Rename(old(n), old(n+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return false, fmt.Errorf("rotate %s: %w", path, err)
			}
		}
		copyErr = copyTail(path, old(1), RotateTemp(path), maxBytes)
	}
	if err := os.Truncate(path, 0); err != nil {
		return false, errors.Join(
			fmt.Errorf("rotate %s: truncate: %w", path, err),
			copyErr) // nil when the copy succeeded
	}
	if copyErr != nil {
		return true, fmt.Errorf("rotate %s: truncated without a copy: %w", path, copyErr)
	}
	return true, nil
}

// RotateTemp is the temp file RotateLog copies the log at path through
// before renaming it to path.1. path may be a glob ("logs/*.log"): the
// result then matches every log's temp file.
func RotateTemp(path string) string { return path + ".1.tmp" }

// copyTail copies the last max bytes src holds now to a new dst through
// tmp (so dst is never half written; a failed copy removes tmp at once).
func copyTail(src, dst, tmp string, max int64) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	if off := fi.Size() - max; off > 0 {
		if _, err := in.Seek(off, io.SeekStart); err != nil {
			return fmt.Errorf("copy to %s: %w", dst, err)
		}
	}
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	// At most max bytes: what the service appends during the copy is not
	// copied (it is lost with the truncation), so dst never exceeds max.
	_, err = io.Copy(out, io.LimitReader(in, max))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	return nil
}
