package storagedriver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containers/storage"
	"github.com/containers/storage/pkg/ioutils"
	"github.com/containers/storage/pkg/lockfile"
)

// persistLayer writes the record of a layer created by
// AdditionalLayer.PutAs into the store's layers.json.
//
// containers/storage v1.59's layerStore.PutAdditionalLayer keeps the new
// record in memory only: it never sets the record's (unexported) location,
// and saving writes, per location, only the records of that location. The
// layer, and with it the image on top, would be gone for every other process
// and for this one after its next reload ("layer not known"). Until the fix
// is upstream (one line: give the record the stable location), the record
// is added to the stable layers.json here exactly as containers/storage
// writes it (the JSON of storage.Layer), under the layer store's lock file,
// and the write is recorded so every user of the store, this process
// included, reloads it. A record already in the file (a fixed
// containers/storage) is left alone.
func persistLayer(store storage.Store, l *storage.Layer) error {
	dir := filepath.Join(store.GraphRoot(), store.GraphDriverName()+"-layers")
	lk, err := lockfile.GetLockFile(filepath.Join(dir, "layers.lock"))
	if err != nil {
		return fmt.Errorf("persist layer %s: %w", l.ID, err)
	}
	lk.Lock()
	defer lk.Unlock()
	path := filepath.Join(dir, "layers.json")
	var records []json.RawMessage
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("persist layer %s: %w", l.ID, err)
	default:
		if err := json.Unmarshal(data, &records); err != nil {
			return fmt.Errorf("persist layer %s: %s: %w", l.ID, path, err)
		}
	}
	for _, r := range records {
		var rec struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(r, &rec) == nil && rec.ID == l.ID {
			return nil
		}
	}
	rec, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("persist layer %s: %w", l.ID, err)
	}
	out, err := json.Marshal(append(records, rec))
	if err != nil {
		return fmt.Errorf("persist layer %s: %w", l.ID, err)
	}
	// Recorded before the file changes, as containers/storage does: a
	// process dying in between leaves readers reloading, not stale.
	if _, err := lk.RecordWrite(); err != nil {
		return fmt.Errorf("persist layer %s: %w", l.ID, err)
	}
	if err := ioutils.AtomicWriteFile(path, out, 0o600); err != nil {
		return fmt.Errorf("persist layer %s: %w", l.ID, err)
	}
	return nil
}
