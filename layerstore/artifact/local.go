package artifact

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// Local is the artifact store in a local directory:
//
//	<dir>/blobs/<alg>/<hex>   content-addressed blobs
//	<dir>/refs/<kind>/<key>   a mapping: the target digest as text
//
// Every file is written atomically (temporary file and rename). Blobs are
// evicted least recently used first (by modification time, refreshed on
// read) when the store grows beyond its cap; pinned blobs are kept.
type Local struct {
	dir string

	mu sync.Mutex // guards the fields below
	// max is the cap in bytes of blobs (0 = no cap).
	max  int64
	pins map[digest.Digest]int
}

var _ Backend = (*Local)(nil)

// OpenLocal opens (creating it if needed) a local store in dir with a cap of
// maxBytes of blobs (0 = none). Temporary files of interrupted writes are
// removed.
func OpenLocal(dir string, maxBytes int64) (*Local, error) {
	for _, sub := range []string{"blobs", "refs"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("artifact: %w", err)
		}
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") {
			return os.Remove(p)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("artifact: scan %s: %w", dir, err)
	}
	return &Local{dir: dir, max: maxBytes, pins: make(map[digest.Digest]int)}, nil
}

func (l *Local) blobPath(d digest.Digest) string {
	return filepath.Join(l.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func (l *Local) refPath(kind RefKind, key string) (string, error) {
	if kind != ImageRef && kind != LayerRef {
		return "", fmt.Errorf("artifact: unknown mapping kind %q", kind)
	}
	if key == "" || strings.ContainsAny(key, "/\\.\x00") {
		return "", fmt.Errorf("artifact: invalid mapping key %q", key)
	}
	return filepath.Join(l.dir, "refs", string(kind), key), nil
}

// Open opens blob d for reading at random offsets (zTOCs are read this way so
// their checkpoint windows stay on disk). The caller closes the file.
func (l *Local) Open(d digest.Digest) (*os.File, int64, error) {
	if err := d.Validate(); err != nil {
		return nil, 0, fmt.Errorf("artifact: %w", err)
	}
	f, err := os.Open(l.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("artifact: blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("artifact: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("artifact: %w", err)
	}
	l.touch(l.blobPath(d), st.ModTime())
	return f, st.Size(), nil
}

// touch refreshes a file's modification time (the access time that orders
// eviction), at most once a minute.
func (l *Local) touch(p string, mtime time.Time) {
	if now := time.Now(); now.Sub(mtime) > time.Minute {
		_ = os.Chtimes(p, now, now) // best effort
	}
}

// ReadBlob implements Backend; the blob is verified against d.
func (l *Local) ReadBlob(_ context.Context, d digest.Digest) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("artifact: %w", err)
	}
	p := l.blobPath(d)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("artifact: blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("artifact: %w", err)
	}
	if err := verify(d, data); err != nil {
		os.Remove(p) // corrupt (e.g. disk damage): drop it, it will be fetched or rebuilt
		return nil, fmt.Errorf("artifact: blob %s dropped: %w", d, err)
	}
	if st, err := os.Stat(p); err == nil {
		l.touch(p, st.ModTime())
	}
	return data, nil
}

// WriteBlob implements Backend.
func (l *Local) WriteBlob(_ context.Context, d digest.Digest, data []byte) error {
	if err := verify(d, data); err != nil {
		return err
	}
	p := l.blobPath(d)
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if err := writeAtomic(p, data); err != nil {
		return err
	}
	l.evict()
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
	if _, err := os.Stat(l.blobPath(d)); err != nil {
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
	return writeAtomic(p, []byte(target.String()+"\n"))
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
	if err := os.Remove(l.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("artifact: %w", err)
	}
	return nil
}

// Pin keeps blob d from eviction until a matching Unpin.
func (l *Local) Pin(d digest.Digest) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pins[d]++
}

// Unpin undoes one Pin.
func (l *Local) Unpin(d digest.Digest) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pins[d] <= 1 {
		delete(l.pins, d)
		return
	}
	l.pins[d]--
}

// Max returns the cap in bytes (0 = none).
func (l *Local) Max() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

// SetMax changes the cap and evicts what exceeds it.
func (l *Local) SetMax(maxBytes int64) {
	l.mu.Lock()
	l.max = maxBytes
	l.mu.Unlock()
	l.evict()
}

type blobFile struct {
	d     digest.Digest
	path  string
	size  int64
	mtime time.Time
}

// Usage returns the number and total size of blobs.
func (l *Local) Usage() (n int, size int64, err error) {
	blobs, err := l.blobs()
	for _, b := range blobs {
		size += b.size
	}
	return len(blobs), size, err
}

func (l *Local) blobs() ([]blobFile, error) {
	var out []blobFile
	root := filepath.Join(l.dir, "blobs")
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if de.IsDir() || strings.HasPrefix(de.Name(), ".tmp-") {
			return nil
		}
		alg := filepath.Base(filepath.Dir(p))
		d := digest.NewDigestFromEncoded(digest.Algorithm(alg), de.Name())
		if d.Validate() != nil {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return nil
		}
		out = append(out, blobFile{d: d, path: p, size: info.Size(), mtime: info.ModTime()})
		return nil
	})
	return out, err
}

// Prune evicts unpinned blobs, least recently used first, until at most
// target bytes remain. It returns the bytes freed.
func (l *Local) Prune(target int64) (int64, error) {
	blobs, err := l.blobs()
	if err != nil {
		return 0, fmt.Errorf("artifact: %w", err)
	}
	var size int64
	for _, b := range blobs {
		size += b.size
	}
	slices.SortFunc(blobs, func(a, b blobFile) int { return a.mtime.Compare(b.mtime) })
	var freed int64
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range blobs {
		if size-freed <= target {
			break
		}
		if l.pins[b.d] > 0 {
			continue
		}
		if err := os.Remove(b.path); err == nil {
			freed += b.size
		}
	}
	return freed, nil
}

func (l *Local) evict() {
	l.mu.Lock()
	max := l.max
	l.mu.Unlock()
	if max > 0 {
		_, _ = l.Prune(max) // best effort; the next write tries again
	}
}

// writeAtomic writes data to p through a temporary file in the same
// directory and a rename, so readers never see a partial file.
func writeAtomic(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return fmt.Errorf("artifact: %w", err)
	}
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("artifact: write %s: %w", p, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("artifact: %w", err)
	}
	return nil
}
