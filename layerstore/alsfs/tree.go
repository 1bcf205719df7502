package alsfs

import (
	"sort"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// tree is the immutable diff tree of a layer: inodes indexed from 0 (the
// root directory) and the directory entries of every directory, each
// directory's entries contiguous and sorted by name. Inode numbers are
// assigned by the view that serves the tree (base + index).
type tree struct {
	inodes  []inode
	dirents []dirent
}

// inode is one file of the diff tree. Hard links share an inode.
type inode struct {
	mode      uint32 // S_IFMT type bits | permission bits (07777)
	nlink     uint32
	uid, gid  uint32
	rdev      uint32 // Linux new_encode_dev, as FUSE expects
	size      int64
	mtimeSec  int64
	mtimeNsec uint32
	// entry is the index into LayerContent.Entries of the regular file
	// whose data this is; -1 for other kinds.
	entry int32
	// parent is the parent directory of a directory; -1 for the root and
	// for other kinds.
	parent int32
	// first and count delimit a directory's entries in tree.dirents.
	first, count int32
	// link is a symlink's target.
	link string
	// xattrs is sorted by name.
	xattrs []xattr
}

type dirent struct {
	name string
	ino  int32
}

type xattr struct {
	name  string
	value string
}

func (in *inode) kind() uint32 { return in.mode & syscall.S_IFMT }

// children returns the entries of directory k.
func (t *tree) children(k int32) []dirent {
	in := &t.inodes[k]
	return t.dirents[in.first : in.first+in.count]
}

// lookup finds name in directory k.
func (t *tree) lookup(k int32, name string) (int32, bool) {
	ents := t.children(k)
	i := sort.Search(len(ents), func(i int) bool { return ents[i].name >= name })
	if i < len(ents) && ents[i].name == name {
		return ents[i].ino, true
	}
	return -1, false
}

// fillAttr writes the attributes of inode k, numbered ino, to out.
func (t *tree) fillAttr(k int32, ino uint64, out *fuse.Attr) {
	in := &t.inodes[k]
	out.Ino = ino
	out.Mode = in.mode
	out.Nlink = in.nlink
	out.Uid = in.uid
	out.Gid = in.gid
	out.Rdev = in.rdev
	out.Blksize = 4096
	switch in.kind() {
	case syscall.S_IFREG:
		out.Size = uint64(in.size)
		out.Blocks = (out.Size + 511) / 512
	case syscall.S_IFLNK:
		out.Size = uint64(len(in.link))
	case syscall.S_IFDIR:
		// What a small directory on ext4 reports.
		out.Size = 4096
		out.Blocks = 8
	}
	out.Mtime = uint64(in.mtimeSec)
	out.Mtimensec = in.mtimeNsec
	out.Atime, out.Atimensec = out.Mtime, out.Mtimensec
	out.Ctime, out.Ctimensec = out.Mtime, out.Mtimensec
}

// getxattr implements getxattr(2) for inode k.
func (t *tree) getxattr(k int32, name string, dest []byte) (uint32, syscall.Errno) {
	xs := t.inodes[k].xattrs
	i := sort.Search(len(xs), func(i int) bool { return xs[i].name >= name })
	if i == len(xs) || xs[i].name != name {
		return 0, syscall.ENODATA
	}
	v := xs[i].value
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// listxattr implements listxattr(2) for inode k.
func (t *tree) listxattr(k int32, dest []byte) (uint32, syscall.Errno) {
	var b strings.Builder
	for _, x := range t.inodes[k].xattrs {
		b.WriteString(x.name)
		b.WriteByte(0)
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), 0
}
