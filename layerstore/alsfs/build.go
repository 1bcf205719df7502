package alsfs

import (
	"errors"
	"fmt"
	"math"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/lazypull/lazypull/ztoc"
)

// The diff tree is the result of containers/storage's archive.Unpack with
// the overlay whiteout converter (pkg/archive, v1.43 to v1.59), run over
// the layer's entries in order:
//
//   - Names are cleaned like filepath.Clean: "./a/b", "a/b/" and "/a/b" are
//     all a/b. The entry "." is ignored. A name or hard-link target that
//     leaves the root ("..", "../x", "a/../../x") refuses the layer (the
//     host, which extracts under chroot, would clamp it to the root).
//   - Missing parent directories are created with mode 0755 (0777 under
//     the usual umask 022), owner 0:0 and, as a fixed stand-in for the
//     extraction time, mtime 0 (1970-01-01).
//   - An entry replaces whatever exists under its name (a directory with
//     its whole subtree), except that a directory entry over an existing
//     directory only updates its mode, owner, mtime and xattrs.
//   - `.wh..wh..opq` sets the opaque xattrs (Options.OpaqueXattrs) to "y"
//     on its directory. `.wh.NAME` creates NAME as a character device 0:0
//     with mode 0000 and the entry's owner; if NAME already exists in this
//     layer the host's mknod fails with EEXIST, so the layer is refused.
//     Whiteouts whose parent is not a directory are skipped, as the host
//     skips ENOTDIR.
//   - Modes are exactly the tar mode & 07777 (setuid, setgid and sticky
//     included); symlinks are 0777. Owners are the numeric uid/gid.
//     Modification times are the entry's, in nanoseconds; a directory's
//     mtime is that of its last directory entry, applied after all
//     entries, as the host does (to whatever then has that name; the host
//     would follow a symlink there, which is left alone). atime and ctime
//     equal mtime.
//   - A hard link shares the inode of its target, which must already
//     exist and not be a directory; like the host's lchown/chmod/chtimes
//     on the link, its owner, mode and mtime (the last two unless the
//     target is a symlink) and xattrs apply to the shared inode.
//   - Xattrs come from PAX SCHILY.xattr.* records; security.selinux is
//     ignored as by the host.
//   - The root directory has mode 0555 and owner 0:0, like the diff
//     directory the overlay driver creates; only an entry named "/"
//     changes it.
//
// What the host could extract but FUSE cannot represent refuses the layer:
// device numbers beyond 12-bit major / 20-bit minor, names longer than 255
// bytes or containing NUL, and parents that are symlinks (the host would
// follow them inside the chroot).

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	maxNameLen     = 255
	rootPerm       = 0o555
	implicitPerm   = 0o755
)

var (
	errNotDir       = errors.New("a parent is not a directory")
	errEscapes      = errors.New("path leaves the layer root")
	errNameTooLong  = errors.New("name component longer than 255 bytes")
	errNameHasNUL   = errors.New("name contains a NUL byte")
	implicitDirTime = time.Unix(0, 0)
	ignoredXattrs   = map[string]bool{"security.selinux": true}
)

// Validate reports whether a layer with these entries can be served,
// returning an error wrapping ErrInvalidLayer if not. Lookups run the same
// check, so a Resolver may use it to refuse a layer early.
func Validate(entries []ztoc.FileMetadata) error {
	_, err := buildTree(entries, DefaultOpaqueXattrs())
	return err
}

// mnode is a node of the tree while it is being built.
type mnode struct {
	mode     uint32
	uid, gid uint32
	rdev     uint32
	size     int64
	mtime    time.Time
	entry    int32
	link     string
	xattrs   map[string]string
	children map[string]*mnode // directories only
	index    int32             // in the frozen tree; -1 before freeze
}

func (n *mnode) isDir() bool { return n.mode&syscall.S_IFMT == syscall.S_IFDIR }

func newDir(perm, uid, gid uint32, mtime time.Time) *mnode {
	return &mnode{mode: syscall.S_IFDIR | perm, uid: uid, gid: gid, mtime: mtime, entry: -1, index: -1,
		children: make(map[string]*mnode)}
}

// dirTime is a directory entry whose mtime is applied after all entries.
type dirTime struct {
	path  []string
	mtime time.Time
}

type builder struct {
	entries  []ztoc.FileMetadata
	opaque   []string
	root     *mnode
	dirTimes []dirTime
}

// buildTree builds the diff tree of a layer from its entries.
func buildTree(entries []ztoc.FileMetadata, opaqueXattrs []string) (*tree, error) {
	if len(entries) >= math.MaxInt32-1 {
		return nil, fmt.Errorf("%w: %d entries", ErrInvalidLayer, len(entries))
	}
	b := &builder{
		entries: entries,
		opaque:  opaqueXattrs,
		root:    newDir(rootPerm, 0, 0, implicitDirTime),
	}
	for i := range entries {
		if err := b.add(i); err != nil {
			return nil, fmt.Errorf("%w: entry %d %q: %w", ErrInvalidLayer, i, entries[i].Name, err)
		}
	}
	for _, dt := range b.dirTimes {
		n, err := b.walk(dt.path)
		if err != nil {
			return nil, fmt.Errorf("%w: setting the mtime of directory %q: %w", ErrInvalidLayer, strings.Join(dt.path, "/"), err)
		}
		if n.mode&syscall.S_IFMT != syscall.S_IFLNK {
			n.mtime = dt.mtime
		}
	}
	return b.freeze(), nil
}

// splitPath cleans a tar name into its components; nil means the root.
// skip reports the entry ".", which extraction ignores.
func splitPath(name string) (comps []string, skip bool, err error) {
	if strings.IndexByte(name, 0) >= 0 {
		return nil, false, errNameHasNUL
	}
	c := path.Clean(name)
	switch {
	case c == ".":
		return nil, true, nil
	case c == "..", strings.HasPrefix(c, "../"):
		return nil, false, errEscapes
	}
	c = strings.TrimPrefix(c, "/")
	if c == "" {
		return nil, false, nil
	}
	comps = strings.Split(c, "/")
	for _, p := range comps {
		if len(p) > maxNameLen {
			return nil, false, errNameTooLong
		}
	}
	return comps, false, nil
}

func (b *builder) add(i int) error {
	e := &b.entries[i]
	comps, skip, err := splitPath(e.Name)
	if err != nil || skip {
		return err
	}
	if comps == nil {
		if e.Type != ztoc.TypeDir {
			return fmt.Errorf("the root is a %q entry, not a directory", e.Type)
		}
		b.setMeta(b.root, e, true, true)
		b.dirTimes = append(b.dirTimes, dirTime{nil, e.ModTime})
		return nil
	}
	base := comps[len(comps)-1]
	isWhiteout := strings.HasPrefix(base, whiteoutPrefix)
	parent, err := b.mkdirAll(comps[:len(comps)-1])
	if err != nil {
		if isWhiteout && errors.Is(err, errNotDir) {
			return nil
		}
		return err
	}
	if old := parent.children[base]; old != nil && !(old.isDir() && e.Type == ztoc.TypeDir) {
		delete(parent.children, base)
	}

	if base == opaqueMarker {
		for _, name := range b.opaque {
			setXattr(parent, name, "y")
		}
		return nil
	}
	if isWhiteout {
		orig := base[len(whiteoutPrefix):]
		if orig == "" || orig == "." || orig == ".." {
			return errors.New("whiteout names no file")
		}
		if parent.children[orig] != nil {
			return fmt.Errorf("whiteout of %q, which this layer also contains (extraction fails with EEXIST)", orig)
		}
		parent.children[orig] = &mnode{mode: syscall.S_IFCHR, uid: e.UID, gid: e.GID, mtime: e.ModTime, entry: -1, index: -1}
		return nil
	}

	switch e.Type {
	case ztoc.TypeDir:
		d := parent.children[base]
		if d == nil {
			d = newDir(0, 0, 0, e.ModTime)
			parent.children[base] = d
		}
		b.setMeta(d, e, true, true)
		b.dirTimes = append(b.dirTimes, dirTime{comps, e.ModTime})
	case ztoc.TypeReg:
		if e.UncompressedSize < 0 {
			return fmt.Errorf("negative size %d", e.UncompressedSize)
		}
		n := &mnode{mode: syscall.S_IFREG, size: e.UncompressedSize, entry: int32(i), index: -1}
		b.setMeta(n, e, true, true)
		parent.children[base] = n
	case ztoc.TypeSymlink:
		n := &mnode{mode: syscall.S_IFLNK | 0o777, link: e.Linkname, entry: -1, index: -1}
		b.setMeta(n, e, false, true)
		parent.children[base] = n
	case ztoc.TypeChar, ztoc.TypeBlock, ztoc.TypeFifo:
		n := &mnode{mode: syscall.S_IFIFO, entry: -1, index: -1}
		if e.Type != ztoc.TypeFifo {
			n.mode = syscall.S_IFCHR
			if e.Type == ztoc.TypeBlock {
				n.mode = syscall.S_IFBLK
			}
			if n.rdev, err = encodeDev(e.Devmajor, e.Devminor); err != nil {
				return err
			}
		}
		b.setMeta(n, e, true, true)
		parent.children[base] = n
	case ztoc.TypeHardlink:
		target, err := b.linkTarget(e.Linkname)
		if err != nil {
			return err
		}
		parent.children[base] = target
		notSymlink := target.mode&syscall.S_IFMT != syscall.S_IFLNK
		b.setMeta(target, e, notSymlink, notSymlink)
	default:
		return fmt.Errorf("unhandled entry type %q", e.Type)
	}
	return nil
}

// setMeta applies an entry's owner and xattrs to n, its permission bits
// if setMode and its mtime if setTime, as the host's lchown, lsetxattr,
// chmod and chtimes do.
func (b *builder) setMeta(n *mnode, e *ztoc.FileMetadata, setMode, setTime bool) {
	n.uid, n.gid = e.UID, e.GID
	if setMode {
		n.mode = n.mode&syscall.S_IFMT | uint32(e.Mode)&0o7777
	}
	if setTime {
		n.mtime = e.ModTime
	}
	for k, v := range e.Xattrs() {
		if !ignoredXattrs[k] {
			setXattr(n, k, v)
		}
	}
}

func setXattr(n *mnode, name, value string) {
	if n.xattrs == nil {
		n.xattrs = make(map[string]string)
	}
	n.xattrs[name] = value
}

// mkdirAll returns the directory at comps, creating missing ones.
func (b *builder) mkdirAll(comps []string) (*mnode, error) {
	cur := b.root
	for _, c := range comps {
		next := cur.children[c]
		switch {
		case next == nil:
			next = newDir(implicitPerm, 0, 0, implicitDirTime)
			cur.children[c] = next
		case !next.isDir():
			return nil, errNotDir
		}
		cur = next
	}
	return cur, nil
}

// walk returns the node at comps without following symlinks.
func (b *builder) walk(comps []string) (*mnode, error) {
	cur := b.root
	for i, c := range comps {
		if !cur.isDir() {
			return nil, errNotDir
		}
		next := cur.children[c]
		if next == nil {
			return nil, fmt.Errorf("%q does not exist", strings.Join(comps[:i+1], "/"))
		}
		cur = next
	}
	return cur, nil
}

// linkTarget returns the existing non-directory a hard link points to.
func (b *builder) linkTarget(name string) (*mnode, error) {
	comps, skip, err := splitPath(name)
	if err != nil {
		return nil, fmt.Errorf("hard link target %q: %w", name, err)
	}
	if skip || comps == nil {
		return nil, fmt.Errorf("hard link to the root directory")
	}
	n, err := b.walk(comps)
	if err != nil {
		return nil, fmt.Errorf("hard link target %q: %w", name, err)
	}
	if n.isDir() {
		return nil, fmt.Errorf("hard link to directory %q", name)
	}
	return n, nil
}

// encodeDev encodes a device number as FUSE's 32-bit rdev (the kernel's
// new_encode_dev).
func encodeDev(major, minor int64) (uint32, error) {
	if major < 0 || major > 0xfff || minor < 0 || minor > 0xfffff {
		return 0, fmt.Errorf("device number %d:%d does not fit FUSE's 32-bit rdev", major, minor)
	}
	return uint32(minor&0xff | major<<8 | (minor&^0xff)<<12), nil
}

// freeze lays the built tree out breadth first, each directory's entries
// sorted by name, and counts links.
func (b *builder) freeze() *tree {
	t := &tree{
		inodes:  make([]inode, 0, len(b.entries)+1),
		dirents: make([]dirent, 0, len(b.entries)),
	}
	add := func(n *mnode, parent int32) int32 {
		if n.index >= 0 {
			return n.index
		}
		k := int32(len(t.inodes))
		n.index = k
		in := inode{
			mode: n.mode, uid: n.uid, gid: n.gid, rdev: n.rdev, size: n.size,
			mtimeSec: n.mtime.Unix(), mtimeNsec: uint32(n.mtime.Nanosecond()),
			entry: n.entry, parent: -1, link: n.link,
		}
		if n.isDir() {
			in.parent = parent
			in.nlink = 2
		}
		for name, value := range n.xattrs {
			in.xattrs = append(in.xattrs, xattr{name, value})
		}
		sort.Slice(in.xattrs, func(i, j int) bool { return in.xattrs[i].name < in.xattrs[j].name })
		t.inodes = append(t.inodes, in)
		return k
	}
	add(b.root, -1)
	for queue := []*mnode{b.root}; len(queue) > 0; queue = queue[1:] {
		d := queue[0]
		k := d.index
		names := make([]string, 0, len(d.children))
		for name := range d.children {
			names = append(names, name)
		}
		sort.Strings(names)
		first := int32(len(t.dirents))
		for _, name := range names {
			c := d.children[name]
			ck := add(c, k)
			t.dirents = append(t.dirents, dirent{name, ck})
			if c.isDir() {
				t.inodes[k].nlink++
				queue = append(queue, c)
			} else {
				t.inodes[ck].nlink++
			}
		}
		t.inodes[k].first, t.inodes[k].count = first, int32(len(names))
	}
	return t
}
