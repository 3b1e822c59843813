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
// one (path.keep is dropped), the file is copied to path.1 and then
// truncated to zero. The service keeps writing to the file it opened
// O_APPEND: its next write lands at the new end, so it never needs to know.
// What it writes between the copy and the truncation is lost (a moment's
// output, once per rotation); that is the price of not signalling it.
//
// Disk use per log is bounded by about (keep+1) × maxBytes plus what the
// service writes between two calls. keep 0 keeps no old files. It reports
// whether it rotated. maxBytes <= 0 disables rotation.
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
		if err := copyFile(path, old(1)); err != nil {
			return false, fmt.Errorf("rotate %s: %w", path, err)
		}
	}
	if err := os.Truncate(path, 0); err != nil {
		return false, fmt.Errorf("rotate %s: truncate: %w", path, err)
	}
	return true, nil
}

// copyFile copies what src holds now to a new dst (through a temp file, so
// dst is never half written).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	// Up to EOF, to lose as little as possible before the truncation, but
	// bounded: a writer appending as fast as this copies must not keep it
	// going for ever.
	_, err = io.Copy(out, io.LimitReader(in, 2*fi.Size()))
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
