package imagegen

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultCacheDir is where Cached keeps images unless the environment
// variable LAZYPULL_TESTIMAGES names another directory.
const DefaultCacheDir = "/var/tmp/lazypull-testimages"

// CacheDir returns $LAZYPULL_TESTIMAGES, or DefaultCacheDir when it is unset.
func CacheDir() string {
	if d := os.Getenv("LAZYPULL_TESTIMAGES"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Cached returns the image o describes from the cache directory dir,
// generating it first unless dir already holds it: an image is reused when
// its recorded key (generator version, options, architecture and busybox
// digest) matches and its blobs have the recorded sizes. The image lives in
// dir/<name>-<key prefix>; other versions of the same name are removed after
// a new one is made. Concurrent callers (several test processes) are
// serialized with a lock file, and an image appears in dir only complete
// (generated under a temporary name, then renamed).
func Cached(dir string, o Options) (*Image, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	_, busyboxSum, err := readBusybox(o)
	if err != nil {
		return nil, err
	}
	key, err := cacheKey(o, busyboxSum)
	if err != nil {
		return nil, err
	}
	name := o.Name
	if name == "" {
		name = "image"
	}
	final := filepath.Join(dir, name+"-"+key[:16])
	if img, err := loadValid(final, key); err == nil {
		return img, nil
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("imagegen: cache: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, ".lock-"+name))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if img, err := loadValid(final, key); err == nil {
		return img, nil // made by another process while we waited
	}
	if err := os.RemoveAll(final); err != nil {
		return nil, fmt.Errorf("imagegen: cache: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("imagegen: cache: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if _, err := Generate(tmp, o); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("imagegen: cache: %w", err)
	}
	removeOtherVersions(dir, name, final)
	return loadValid(final, key)
}

// loadValid loads the image in dir if it has the key and all its blobs.
func loadValid(dir, key string) (*Image, error) {
	img, err := Load(dir)
	if err != nil {
		return nil, err
	}
	if img.Key != key || img.GeneratorVersion != GeneratorVersion {
		return nil, fmt.Errorf("%w: %s holds another version", ErrNoImage, dir)
	}
	want := map[string]int64{img.ManifestDigest.Encoded(): img.ManifestSize}
	for _, l := range img.Layers {
		want[l.Digest.Encoded()] = l.Size
	}
	for name, size := range want {
		fi, err := os.Stat(filepath.Join(dir, "blobs", "sha256", name))
		if err != nil || fi.Size() != size {
			return nil, fmt.Errorf("%w: %s misses blob %s", ErrNoImage, dir, name)
		}
	}
	img.Dir = dir
	return img, nil
}

// removeOtherVersions deletes dir/<name>-* except keep. Failures only waste
// space, so they are ignored.
func removeOtherVersions(dir, name, keep string) {
	matches, _ := filepath.Glob(filepath.Join(dir, name+"-*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), name+"-")
		if m != keep && len(rest) == 16 {
			_ = os.RemoveAll(m)
		}
	}
}

// lockFile takes an exclusive flock on name (created if needed) and returns
// the function that releases it.
func lockFile(name string) (func(), error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("imagegen: cache lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("imagegen: cache lock %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}
