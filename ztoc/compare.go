package ztoc

import (
	"fmt"
	"maps"
)

// CompareTOC reports the first difference between two file tables of the
// same layer (e.g. a zTOC and the table rebuilt from the layer itself), or
// nil when every entry matches: name, type, data offset and size, link
// target, mode, owner, modification time, device numbers and PAX records.
func CompareTOC(a, b []FileMetadata) error {
	if len(a) != len(b) {
		return fmt.Errorf("%w: %d entries, the layer has %d", ErrMalformed, len(a), len(b))
	}
	for i := range a {
		x, y := &a[i], &b[i]
		var field string
		switch {
		case x.Name != y.Name:
			field = "name"
		case x.Type != y.Type:
			field = "type"
		case x.UncompressedOffset != y.UncompressedOffset:
			field = "data offset"
		case x.UncompressedSize != y.UncompressedSize:
			field = "size"
		case x.Linkname != y.Linkname:
			field = "link target"
		case x.Mode != y.Mode:
			field = "mode"
		case x.UID != y.UID || x.GID != y.GID:
			field = "owner"
		case !x.ModTime.Equal(y.ModTime):
			field = "modification time"
		case x.Devmajor != y.Devmajor || x.Devminor != y.Devminor:
			field = "device numbers"
		case !maps.Equal(x.PAXRecords, y.PAXRecords) && (len(x.PAXRecords) > 0 || len(y.PAXRecords) > 0):
			field = "PAX records"
		default:
			continue
		}
		return fmt.Errorf("%w: entry %d (%q): %s differs from the layer's (%q)", ErrMalformed, i, x.Name, field, y.Name)
	}
	return nil
}
