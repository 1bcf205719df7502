package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// ErrNotDir is returned by Snapshot when the root is not a directory.
var ErrNotDir = errors.New("fstree: snapshot root is not a directory")

// Snapshot walks the directory root without following symlinks and describes
// every path below it: type, mode, owner, size, mtime, every extended
// attribute it can list, symlink target, device numbers, sha256 of regular
// files and hard-link groups (paths sharing device and inode number). Regular
// files are hashed by several goroutines at once; FIFOs and devices are never
// opened.
func Snapshot(root string) (Tree, error) {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return nil, fmt.Errorf("fstree: stat %s: %w", root, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("%w: %s", ErrNotDir, root)
	}

	t := make(Tree)
	ids := make(map[string]string)
	var files []string
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("fstree: walk: %w", err)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return fmt.Errorf("fstree: walk: %w", err)
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		n, id, err := describe(path)
		if err != nil {
			return err
		}
		t[rel] = n
		if n.Type != TypeDir {
			ids[rel] = id
		}
		if n.Type == TypeFile {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	AssignLinkGroups(t, ids)
	if err := hashFiles(root, t, files); err != nil {
		return nil, err
	}
	return t, nil
}

// describe lstats path and reads its xattrs and link target. The returned id
// identifies the inode (device and inode number).
func describe(path string) (Node, string, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return Node{}, "", fmt.Errorf("fstree: lstat %s: %w", path, err)
	}
	n := Node{
		Mode:    st.Mode & ModeMask,
		UID:     int(st.Uid),
		GID:     int(st.Gid),
		MtimeNs: st.Mtim.Nano(),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		n.Type = TypeDir
	case unix.S_IFREG:
		n.Type = TypeFile
		n.Size = st.Size
	case unix.S_IFLNK:
		n.Type = TypeSymlink
		target, err := os.Readlink(path)
		if err != nil {
			return Node{}, "", fmt.Errorf("fstree: %w", err)
		}
		n.Target = target
	case unix.S_IFCHR, unix.S_IFBLK:
		n.Type = TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			n.Type = TypeBlock
		}
		n.DevMajor = unix.Major(st.Rdev)
		n.DevMinor = unix.Minor(st.Rdev)
	case unix.S_IFIFO:
		n.Type = TypeFIFO
	case unix.S_IFSOCK:
		n.Type = TypeSocket
	default:
		return Node{}, "", fmt.Errorf("fstree: %s: unknown file type %#o", path, st.Mode&unix.S_IFMT)
	}
	x, err := readXattrs(path)
	if err != nil {
		return Node{}, "", err
	}
	n.Xattrs = x
	id := strconv.FormatUint(st.Dev, 10) + ":" + strconv.FormatUint(st.Ino, 10)
	return n, id, nil
}

// readXattrs returns every extended attribute of path (not following
// symlinks), or nil when it has none or the file system does not support them.
func readXattrs(path string) (map[string][]byte, error) {
	var names []byte
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("fstree: listxattr %s: %w", path, err)
		}
		names = buf[:n]
		break
	}
	var x map[string][]byte
	for len(names) > 0 {
		end := 0
		for end < len(names) && names[end] != 0 {
			end++
		}
		name := string(names[:end])
		names = names[min(end+1, len(names)):]
		if name == "" {
			continue
		}
		v, err := getXattr(path, name)
		if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			continue // gone meanwhile, or listed but not readable (not "readable": left out)
		}
		if err != nil {
			return nil, fmt.Errorf("fstree: getxattr %s %s: %w", path, name, err)
		}
		if x == nil {
			x = make(map[string][]byte)
		}
		x[name] = v
	}
	return x, nil
}

func getXattr(path, name string) ([]byte, error) {
	for size := 128; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// hashFiles fills in SHA256 of the listed regular files of t.
func hashFiles(root string, t Tree, files []string) error {
	sums := make([]string, len(files))
	var g errgroup.Group
	g.SetLimit(max(2, runtime.GOMAXPROCS(0)))
	for i, rel := range files {
		g.Go(func() error {
			sum, err := hashFile(filepath.Join(root, filepath.FromSlash(rel)))
			sums[i] = sum
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, rel := range files {
		n := t[rel]
		n.SHA256 = sums[i]
		t[rel] = n
	}
	return nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("fstree: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("fstree: read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
