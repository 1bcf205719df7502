package alsfs

import (
	"context"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// roNode answers every change to a node's attributes with EROFS and
// implements Statfs. Every node type embeds it.
type roNode struct{}

var (
	_ fs.NodeSetattrer     = roNode{}
	_ fs.NodeSetxattrer    = roNode{}
	_ fs.NodeRemovexattrer = roNode{}
	_ fs.NodeStatfser      = roNode{}
)

func (roNode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (roNode) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	return syscall.EROFS
}

func (roNode) Removexattr(context.Context, string) syscall.Errno {
	return syscall.EROFS
}

func (roNode) Statfs(_ context.Context, out *fuse.StatfsOut) syscall.Errno {
	*out = fuse.StatfsOut{Bsize: 4096, Frsize: 4096, NameLen: maxNameLen}
	return 0
}

// roDir answers every change to a directory's entries with EROFS. go-fuse
// would otherwise let unlink and rmdir succeed silently.
type roDir struct{ roNode }

var (
	_ fs.NodeMkdirer   = roDir{}
	_ fs.NodeMknoder   = roDir{}
	_ fs.NodeCreater   = roDir{}
	_ fs.NodeSymlinker = roDir{}
	_ fs.NodeLinker    = roDir{}
	_ fs.NodeUnlinker  = roDir{}
	_ fs.NodeRmdirer   = roDir{}
	_ fs.NodeRenamer   = roDir{}
)

func (roDir) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (roDir) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (roDir) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (roDir) Symlink(context.Context, string, string, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (roDir) Link(context.Context, fs.InodeEmbedder, string, *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (roDir) Unlink(context.Context, string) syscall.Errno { return syscall.EROFS }

func (roDir) Rmdir(context.Context, string) syscall.Errno { return syscall.EROFS }

func (roDir) Rename(context.Context, string, fs.InodeEmbedder, string, uint32) syscall.Errno {
	return syscall.EROFS
}

// access implements access(2) for a node with attributes a. It is only
// consulted when the mount has no default_permissions.
func access(ctx context.Context, a *fuse.Attr, mask uint32) syscall.Errno {
	if mask&unix.W_OK != 0 {
		return syscall.EROFS
	}
	caller, ok := fuse.FromContext(ctx)
	if !ok {
		return 0
	}
	mask &= unix.R_OK | unix.X_OK
	if caller.Uid == 0 {
		if mask&unix.X_OK != 0 && a.Mode&syscall.S_IFMT != syscall.S_IFDIR && a.Mode&0o111 == 0 {
			return syscall.EACCES
		}
		return 0
	}
	perm := a.Mode & 0o7
	switch {
	case caller.Uid == a.Uid:
		perm = a.Mode >> 6 & 0o7
	case caller.Gid == a.Gid:
		perm = a.Mode >> 3 & 0o7
	}
	if mask&^perm != 0 {
		return syscall.EACCES
	}
	return 0
}

// openReadOnly rejects opens that could write.
func openReadOnly(flags uint32) syscall.Errno {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return syscall.EROFS
	}
	return 0
}

// openFlags are returned for every opened file: contents never change.
const openFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH

// seekDense implements SEEK_DATA and SEEK_HOLE for a file of size bytes
// without holes.
func seekDense(size int64, off uint64, whence uint32) (uint64, syscall.Errno) {
	switch whence {
	case unix.SEEK_DATA:
		if off >= uint64(size) {
			return 0, syscall.ENXIO
		}
		return off, 0
	case unix.SEEK_HOLE:
		if off >= uint64(size) {
			return 0, syscall.ENXIO
		}
		return uint64(size), 0
	default:
		return 0, syscall.EINVAL
	}
}

// dirHandle lists a directory. go-fuse serializes calls on one handle.
// The entry at position i has offset i+1, so offsets are stable.
type dirHandle struct {
	pos   int
	n     int
	entry func(i int) fuse.DirEntry
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
)

func (h *dirHandle) Readdirent(context.Context) (*fuse.DirEntry, syscall.Errno) {
	if h.pos >= h.n {
		return nil, 0
	}
	e := h.entry(h.pos)
	h.pos++
	e.Off = uint64(h.pos)
	return &e, 0
}

func (h *dirHandle) Seekdir(_ context.Context, off uint64) syscall.Errno {
	h.pos = h.n
	if off < uint64(h.n) {
		h.pos = int(off)
	}
	return 0
}

// listHandle lists a fixed slice of entries.
func listHandle(entries []fuse.DirEntry) *dirHandle {
	return &dirHandle{n: len(entries), entry: func(i int) fuse.DirEntry { return entries[i] }}
}

// owner is the user and group of what the filesystem makes up (the root,
// ref and layer directories, info, blob): the daemon's own, so that with
// default_permissions only its user (and root) may enter, list or read them.
// podman reads them with the same credentials (as root, or as the user
// namespace's root for rootless podman), and overlay reads a lower layer
// with the credentials of the process that mounted it (podman's), never
// with a container's.
type owner struct{ uid, gid uint32 }

// processOwner is the effective user and group of this process.
func processOwner() owner {
	return owner{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid())}
}

// Modes of what the filesystem makes up: for its owner only.
const (
	madeUpDirPerm  = 0o500
	madeUpFilePerm = 0o400
)

// dirAttr fills the attributes of a directory the filesystem makes up.
func (o owner) dirAttr(ino uint64, nlink uint32, mtimeSec int64, out *fuse.Attr) {
	*out = fuse.Attr{
		Ino: ino, Mode: syscall.S_IFDIR | madeUpDirPerm, Nlink: nlink, Size: 4096, Blocks: 8, Blksize: 4096,
		Mtime: uint64(mtimeSec), Atime: uint64(mtimeSec), Ctime: uint64(mtimeSec),
		Owner: fuse.Owner{Uid: o.uid, Gid: o.gid},
	}
}

// fileAttr fills the attributes of a read-only file the filesystem makes up.
func (o owner) fileAttr(ino uint64, size int64, mtimeSec int64, out *fuse.Attr) {
	*out = fuse.Attr{
		Ino: ino, Mode: syscall.S_IFREG | madeUpFilePerm, Nlink: 1, Size: uint64(size),
		Blocks: (uint64(size) + 511) / 512, Blksize: 4096,
		Mtime: uint64(mtimeSec), Atime: uint64(mtimeSec), Ctime: uint64(mtimeSec),
		Owner: fuse.Owner{Uid: o.uid, Gid: o.gid},
	}
}
