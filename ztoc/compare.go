package ztoc

import "fmt"

// CompareTOC reports the first difference between two file tables of the
// same layer (a, e.g., a zTOC and b the table rebuilt from the layer
// itself), or nil when every entry matches in every field: name, type,
// data offset and size, link target, mode, owner ids and names,
// modification time, device numbers and PAX records. The error wraps
// ErrMalformed. (To check a zTOC against a layer, use LayerIndex.Verify,
// which also checks checkpoints, windows and span digests.)
func CompareTOC(a, b []FileMetadata) error {
	if len(a) != len(b) {
		return fmt.Errorf("%w: %d entries, the layer has %d", ErrMalformed, len(a), len(b))
	}
	for i := range a {
		if d := diffEntry(&a[i], &b[i]); d != "" {
			return fmt.Errorf("%w: entry %d (%.200q): %s", ErrMalformed, i, a[i].Name, d)
		}
	}
	return nil
}
