package storagedriver

import (
	"errors"
	"testing"

	"github.com/containers/image/v5/types"
	"github.com/containers/storage"
	digest "github.com/opencontainers/go-digest"
)

func TestParseIdentity(t *testing.T) {
	for _, id := range []Identity{IdentityTOC, IdentityDiffID} {
		if got, err := ParseIdentity(id.String()); err != nil || got != id {
			t.Errorf("ParseIdentity(%q) = %v, %v; want %v", id.String(), got, err, id)
		}
	}
	if _, err := ParseIdentity("chain"); err == nil {
		t.Error(`ParseIdentity("chain") succeeded, want an error`)
	}
}

// TestCheckLazyDiffID: a layer created for IdentityDiffID must carry exactly
// the record a download would write.
func TestCheckLazyDiffID(t *testing.T) {
	blob := types.BlobInfo{Digest: digest.FromString("blob"), Size: 100}
	diffID := digest.FromString("tar")
	good := storage.Layer{CompressedDigest: blob.Digest, CompressedSize: 100, UncompressedDigest: diffID, UncompressedSize: 10240}
	for _, tc := range []struct {
		name string
		mod  func(*storage.Layer)
		ok   bool
	}{
		{"exact", func(*storage.Layer) {}, true},
		{"TOC digest", func(l *storage.Layer) { l.TOCDigest = blob.Digest }, false},
		{"other blob", func(l *storage.Layer) { l.CompressedDigest = digest.FromString("x") }, false},
		{"other size", func(l *storage.Layer) { l.CompressedSize = 99 }, false},
		{"other DiffID", func(l *storage.Layer) { l.UncompressedDigest = digest.FromString("y") }, false},
		{"no DiffID", func(l *storage.Layer) { l.UncompressedDigest = "" }, false},
		{"unknown tar size", func(l *storage.Layer) { l.UncompressedSize = -1 }, false},
	} {
		l := good
		tc.mod(&l)
		err := checkLazyDiffID(&l, blob, diffID)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUnsafeIdentity)) {
			t.Errorf("%s: checkLazyDiffID = %v, want ok %v (else ErrUnsafeIdentity)", tc.name, err, tc.ok)
		}
	}
}
