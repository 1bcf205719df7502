package artifact

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	digest "github.com/opencontainers/go-digest"
)

// ErrNotFound is returned when a blob or mapping is not in a store.
var ErrNotFound = errors.New("artifact: not found")

// FormatVersion is mixed into every mapping key: changing how lazypull builds
// indexes changes it, so old mappings are ignored and images get re-indexed.
const FormatVersion = "lazypull-soci-v1"

// RefKind names a mapping namespace.
type RefKind string

// Mapping namespaces.
const (
	// ImageRef maps ImageKey(manifest digest) to a SOCI index digest.
	ImageRef RefKind = "image"
	// LayerRef maps LayerKey(layer digest) or ScopedLayerKey(repository,
	// layer digest) to a zTOC digest.
	LayerRef RefKind = "layer"
	// ProfileRef maps ProfileKey(manifest digest) to a start-up profile.
	ProfileRef RefKind = "profile"
)

// validKind reports whether kind is a mapping namespace.
func validKind(kind RefKind) bool {
	return kind == ImageRef || kind == LayerRef || kind == ProfileRef
}

// ProfileKey returns the key of the start-up profile of the image whose
// (platform-specific) manifest has digest manifest.
func ProfileKey(manifest digest.Digest) string {
	return key(fmt.Sprintf("%s/profile/%s", FormatVersion, manifest))
}

// ImageKey returns the key of the image whose (platform-specific) manifest
// has digest manifest, for indexes built with the given span size.
func ImageKey(manifest digest.Digest, spanSize int64) string {
	return key(fmt.Sprintf("%s/span=%d/image/%s", FormatVersion, spanSize, manifest))
}

// LayerKey returns the key of a layer (by compressed digest) for zTOCs built
// with the given span size.
func LayerKey(layer digest.Digest, spanSize int64) string {
	return key(fmt.Sprintf("%s/span=%d/layer/%s", FormatVersion, spanSize, layer))
}

// ScopedLayerKey returns the key of a layer's zTOC found through repository
// repo (its registry's SOCI index, or the shared store for an image of
// repo) and not verified here yet: it serves images of that repository
// only (see layerstore's trust rules).
func ScopedLayerKey(repo string, layer digest.Digest, spanSize int64) string {
	return key(fmt.Sprintf("%s/span=%d/scoped/%s/layer/%s", FormatVersion, spanSize, repo, layer))
}

func key(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Backend is one place artifacts are kept. Implementations verify blob
// digests on write and read.
type Backend interface {
	// ReadBlob returns the blob with digest d, or ErrNotFound.
	ReadBlob(ctx context.Context, d digest.Digest) ([]byte, error)
	// WriteBlob stores data, whose digest is d.
	WriteBlob(ctx context.Context, d digest.Digest, data []byte) error
	// ReadRef returns the digest a mapping points to, or ErrNotFound.
	ReadRef(ctx context.Context, kind RefKind, key string) (digest.Digest, error)
	// WriteRef sets a mapping. For the registry backend the target blob must
	// have been written first (and, for ImageRef, be a SOCI index whose zTOCs
	// were written).
	WriteRef(ctx context.Context, kind RefKind, key string, target digest.Digest) error
}

// verify checks that data has digest d.
func verify(d digest.Digest, data []byte) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("artifact: blob has digest %s, want %s", got, d)
	}
	return nil
}
