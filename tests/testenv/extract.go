package testenv

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// ErrUnsafePath is returned by ExtractImage for an entry whose path leaves
// the destination (absolute, "..", or through a symlink).
var ErrUnsafePath = errors.New("testenv: unsafe path in layer")

// ExtractImage applies the layers of the image in layoutDir (its first
// manifest) to the directory dest, which must exist, with the semantics of an
// overlay mount of the layers: a layer's opaque directories (.wh..wh..opq)
// and whiteouts (.wh.NAME) first hide what the layers below have there, then
// every entry replaces what was at its path, except that a directory over a
// directory keeps its contents and takes the new metadata (mode, owner,
// times and xattrs). Ownership, modes (setuid, setgid, sticky), xattrs,
// devices and nanosecond mtimes are applied, so it must run as root. Layers
// may be gzip (one or more members), zstd or uncompressed.
func ExtractImage(layoutDir, dest string) error {
	m, _, _, err := readLayout(layoutDir)
	if err != nil {
		return err
	}
	for i, l := range m.Layers {
		blob := blobPath(layoutDir, l.Digest)
		if err := forEachHeader(blob, func(hdr *tar.Header, _ io.Reader) error {
			return hideLower(dest, hdr)
		}); err != nil {
			return fmt.Errorf("testenv: extract layer %d (%s): %w", i+1, l.Digest, err)
		}
		var dirs []*tar.Header
		if err := forEachHeader(blob, func(hdr *tar.Header, r io.Reader) error {
			isDir, err := extractEntry(dest, hdr, r)
			if isDir {
				dirs = append(dirs, hdr)
			}
			return err
		}); err != nil {
			return fmt.Errorf("testenv: extract layer %d (%s): %w", i+1, l.Digest, err)
		}
		// Adding entries changed directory mtimes: set them last, deepest
		// first.
		slices.Reverse(dirs)
		for _, hdr := range dirs {
			name, _ := cleanName(hdr.Name)
			if err := setTimes(filepath.Join(dest, name), hdr.ModTime); err != nil {
				return fmt.Errorf("testenv: extract layer %d: %w", i+1, err)
			}
		}
	}
	return nil
}

// forEachHeader decompresses the layer blob and calls fn for every entry.
func forEachHeader(blob string, fn func(*tar.Header, io.Reader) error) error {
	f, err := os.Open(blob)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(hdr, tr); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
}

// cleanName returns the relative, clean form of a tar entry name, or
// ErrUnsafePath.
func cleanName(name string) (string, error) {
	p := path.Clean("/" + name)[1:]
	if p == "" || strings.HasPrefix(name, "/") || slices.Contains(strings.Split(name, "/"), "..") {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	return p, nil
}

// safeParent makes sure every directory above rel exists inside dest as a
// real directory (creating missing ones 0755) and fails if one is a symlink
// or not a directory.
func safeParent(dest, rel string) error {
	cur := dest
	parts := strings.Split(rel, "/")
	for _, part := range parts[:len(parts)-1] {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if errors.Is(err, os.ErrNotExist) {
			if err := os.Mkdir(cur, 0o755); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %s is not a directory", ErrUnsafePath, cur)
		}
	}
	return nil
}

// hideLower applies an opaque marker or whiteout entry.
func hideLower(dest string, hdr *tar.Header) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(name)
	if !strings.HasPrefix(base, ".wh.") {
		return nil
	}
	if err := safeParent(dest, name); err != nil {
		return err
	}
	target := filepath.Join(dest, dir)
	if base == ".wh..wh..opq" {
		children, err := os.ReadDir(target)
		if err != nil {
			return err
		}
		for _, c := range children {
			if err := os.RemoveAll(filepath.Join(target, c.Name())); err != nil {
				return err
			}
		}
		return nil
	}
	return os.RemoveAll(filepath.Join(target, strings.TrimPrefix(base, ".wh.")))
}

// extractEntry creates the entry (whiteouts are skipped: hideLower applied
// them) and reports whether it is a directory.
func extractEntry(dest string, hdr *tar.Header, r io.Reader) (bool, error) {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return false, err
	}
	if strings.HasPrefix(path.Base(name), ".wh.") {
		return false, nil
	}
	if err := safeParent(dest, name); err != nil {
		return false, err
	}
	target := filepath.Join(dest, name)
	old, err := os.Lstat(target)
	exists := err == nil
	if exists && !(old.IsDir() && hdr.Typeflag == tar.TypeDir) {
		if err := os.RemoveAll(target); err != nil {
			return false, err
		}
		exists = false
	}

	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !exists {
			if err := os.Mkdir(target, 0o700); err != nil {
				return false, err
			}
		}
		if err := clearXattrs(target); err != nil {
			return false, err
		}
	case tar.TypeReg:
		f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return false, err
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return false, err
		}
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return false, err
		}
	case tar.TypeLink:
		src, err := cleanName(hdr.Linkname)
		if err != nil {
			return false, err
		}
		if err := safeParent(dest, src); err != nil {
			return false, err
		}
		// The link shares the inode (and its metadata) of its target.
		return false, os.Link(filepath.Join(dest, src), target)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknod(target, kind|0o600, int(dev)); err != nil {
			return false, err
		}
	default:
		return false, fmt.Errorf("unsupported tar type %q", hdr.Typeflag)
	}

	// Owner before mode (chown clears setuid/setgid), xattrs, then times.
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
		return false, err
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Chmod(target, mode); err != nil {
			return false, fmt.Errorf("chmod: %w", err)
		}
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := unix.Lsetxattr(target, name, []byte(v), 0); err != nil {
				return false, fmt.Errorf("setxattr %s: %w", name, err)
			}
		}
	}
	if err := setTimes(target, hdr.ModTime); err != nil {
		return false, err
	}
	return hdr.Typeflag == tar.TypeDir, nil
}

// clearXattrs removes the xattrs of an existing directory that a new layer's
// header for it replaces.
func clearXattrs(p string) error {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return fmt.Errorf("listxattr: %w", err)
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		if err := unix.Lremovexattr(p, name); err != nil {
			return fmt.Errorf("removexattr %s: %w", name, err)
		}
	}
	return nil
}

// setTimes sets atime and mtime of p (not following symlinks) to t.
func setTimes(p string, t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utimes %s: %w", p, err)
	}
	return nil
}
