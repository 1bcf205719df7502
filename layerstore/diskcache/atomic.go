package diskcache

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile writes data to path the way the cache commits entries: a
// temporary file in the same directory (created with perm), fsync, rename.
// Readers see the old content or the new, never a part; after a crash the
// file is whole or absent. The directory is created (0700) if needed.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, tmpPrefix)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := tmp.Write(data)
	perr := tmp.Chmod(perm)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, perr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// RemoveTemporaries removes the temporary files WriteFile left in dir when
// its process was killed.
func RemoveTemporaries(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		if !e.IsDir() && len(e.Name()) > len(tmpPrefix) && e.Name()[:len(tmpPrefix)] == tmpPrefix {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return nil
}
