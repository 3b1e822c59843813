package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Delete removes the state of one service durably (a removed service has
// none: an agent started later knows nothing of it). No state is no error.
func (st *Store) Delete(service string) error {
	path := st.Path(service)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete state %s: %w", path, err)
	}
	d, err := os.Open(st.dir)
	if err != nil {
		return fmt.Errorf("delete state %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("delete state %s: fsync %s: %w", path, st.dir, err)
	}
	return nil
}
