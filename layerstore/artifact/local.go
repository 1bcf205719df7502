package artifact

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/diskcache"
)

// Local is the artifact store in a local directory:
//
//	<dir>/cas/<alg>-<hex>/blob   content-addressed blobs (a diskcache.Cache)
//	<dir>/refs/<kind>/<key>      a mapping: the target digest as text
//
// Every file is written atomically and durably (diskcache's rule). Blobs are
// evicted least recently used first when the store grows beyond its cap;
// pinned blobs are kept. Mappings are tiny and never evicted; one whose blob
// is gone reads as missing.
type Local struct {
	dir   string
	blobs *diskcache.Cache
}

var _ Backend = (*Local)(nil)

// blobName is the entry name of a blob in its group.
const blobName = "blob"

// OpenLocal opens (creating it if needed, mode 0700) a local store in dir
// with a cap of maxBytes of blobs (0 = none). Temporary files of
// interrupted writes are removed, and so is the blob directory of the
// earlier layout (<dir>/blobs).
func OpenLocal(dir string, maxBytes int64) (*Local, error) {
	if err := os.MkdirAll(filepath.Join(dir, "refs"), 0o700); err != nil {
		return nil, fmt.Errorf("artifact: %w", err)
	}
	_ = os.RemoveAll(filepath.Join(dir, "blobs")) // layout before diskcache: re-fetched or rebuilt when needed
	for _, kind := range []RefKind{ImageRef, LayerRef, ProfileRef} {
		if err := diskcache.RemoveTemporaries(filepath.Join(dir, "refs", string(kind))); err != nil {
			return nil, fmt.Errorf("artifact: %w", err)
		}
	}
	blobs, err := diskcache.Open(filepath.Join(dir, "cas"), maxBytes)
	if err != nil {
		return nil, fmt.Errorf("artifact: %w", err)
	}
	return &Local{dir: dir, blobs: blobs}, nil
}

// group is the diskcache group of blob d (its pin unit).
func group(d digest.Digest) string { return d.Algorithm().String() + "-" + d.Encoded() }

func blobKey(d digest.Digest) (diskcache.Key, error) {
	if err := d.Validate(); err != nil {
		return diskcache.Key{}, fmt.Errorf("artifact: %w", err)
	}
	return diskcache.Key{Group: group(d), Name: blobName}, nil
}

func (l *Local) refPath(kind RefKind, key string) (string, error) {
	if !validKind(kind) {
		return "", fmt.Errorf("artifact: unknown mapping kind %q", kind)
	}
	if key == "" || strings.ContainsAny(key, "/\\.\x00") {
		return "", fmt.Errorf("artifact: invalid mapping key %q", key)
	}
	return filepath.Join(l.dir, "refs", string(kind), key), nil
}

func notFoundErr(d digest.Digest, err error) error {
	if errors.Is(err, diskcache.ErrNotFound) {
		return fmt.Errorf("artifact: blob %s: %w", d, ErrNotFound)
	}
	return fmt.Errorf("artifact: blob %s: %w", d, err)
}

// Open opens blob d for reading at random offsets (zTOCs are read this way
// so their checkpoint windows stay on disk), after checking its content
// against d (a blob damaged on disk is dropped). The caller closes the file.
func (l *Local) Open(d digest.Digest) (*os.File, int64, error) {
	k, err := blobKey(d)
	if err != nil {
		return nil, 0, err
	}
	f, size, err := l.blobs.Open(k)
	if err != nil {
		return nil, 0, notFoundErr(d, err)
	}
	h := sha256.New()
	if d.Algorithm() != digest.SHA256 {
		f.Close()
		return nil, 0, fmt.Errorf("artifact: blob %s: unsupported digest algorithm", d)
	}
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("artifact: read blob %s: %w", d, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != d {
		f.Close()
		_ = l.blobs.Remove(k)
		return nil, 0, fmt.Errorf("artifact: blob %s dropped: content has digest %s", d, got)
	}
	return f, size, nil
}

// ReadBlob implements Backend; the blob is verified against d.
func (l *Local) ReadBlob(_ context.Context, d digest.Digest) ([]byte, error) {
	k, err := blobKey(d)
	if err != nil {
		return nil, err
	}
	data, err := l.blobs.ReadFile(k)
	if err != nil {
		return nil, notFoundErr(d, err)
	}
	if err := verify(d, data); err != nil {
		_ = l.blobs.Remove(k) // damaged on disk: drop it, it will be fetched or rebuilt
		return nil, fmt.Errorf("artifact: blob %s dropped: %w", d, err)
	}
	return data, nil
}

// HasBlob reports whether blob d is stored (without reading it).
func (l *Local) HasBlob(d digest.Digest) bool {
	k, err := blobKey(d)
	return err == nil && l.blobs.Has(k)
}

// WriteBlob implements Backend.
func (l *Local) WriteBlob(_ context.Context, d digest.Digest, data []byte) error {
	if err := verify(d, data); err != nil {
		return err
	}
	k, err := blobKey(d)
	if err != nil {
		return err
	}
	if l.blobs.Has(k) {
		return nil
	}
	if err := l.blobs.Put(k, data); err != nil {
		return fmt.Errorf("artifact: store blob %s: %w", d, err)
	}
	return nil
}

// ReadRef implements Backend.
func (l *Local) ReadRef(_ context.Context, kind RefKind, key string) (digest.Digest, error) {
	p, err := l.refPath(kind, key)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("artifact: %s mapping %s: %w", kind, key, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("artifact: %w", err)
	}
	d, err := digest.Parse(strings.TrimSpace(string(data)))
	if err != nil {
		os.Remove(p)
		return "", fmt.Errorf("artifact: %s mapping %s is corrupt, dropped: %w", kind, key, err)
	}
	// A mapping whose blob was evicted is as good as missing.
	if !l.HasBlob(d) {
		return "", fmt.Errorf("artifact: %s mapping %s -> %s: blob gone: %w", kind, key, d, ErrNotFound)
	}
	return d, nil
}

// WriteRef implements Backend.
func (l *Local) WriteRef(_ context.Context, kind RefKind, key string, target digest.Digest) error {
	if err := target.Validate(); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	p, err := l.refPath(kind, key)
	if err != nil {
		return err
	}
	if err := diskcache.WriteFile(p, []byte(target.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	return nil
}

// DeleteRef removes a mapping (e.g. one pointing to a zTOC found wrong).
func (l *Local) DeleteRef(kind RefKind, key string) error {
	p, err := l.refPath(kind, key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("artifact: %w", err)
	}
	return nil
}

// DeleteBlob removes blob d (e.g. a zTOC found to be wrong).
func (l *Local) DeleteBlob(d digest.Digest) error {
	k, err := blobKey(d)
	if err != nil {
		return err
	}
	return l.blobs.Remove(k)
}

// Pin keeps blob d from eviction until a matching Unpin.
func (l *Local) Pin(d digest.Digest) { l.blobs.Pin(group(d)) }

// Unpin undoes one Pin.
func (l *Local) Unpin(d digest.Digest) { l.blobs.Unpin(group(d)) }

// Max returns the cap in bytes (0 = none).
func (l *Local) Max() int64 { return l.blobs.Max() }

// SetMax changes the cap and evicts what exceeds it.
func (l *Local) SetMax(maxBytes int64) { l.blobs.SetMax(maxBytes) }

// Stats returns the blob store's counters (entries are blobs).
func (l *Local) Stats() diskcache.Stats { return l.blobs.Stats() }

// Prune evicts unpinned blobs, least recently used first, until at most
// target bytes remain. It returns the bytes freed.
func (l *Local) Prune(target int64) int64 { return l.blobs.Prune(target) }
