package alsfs

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The nodes of a layer's diff tree: one struct per kind, all reading the
// immutable tree of their view. Node objects are cheap and never reused:
// go-fuse merges concurrent lookups of one inode number into one Inode.

// diffNode is what every node of a diff tree has.
type diffNode struct {
	fs.Inode
	roNode
	v *layerView
	k int32 // index into v.tree.inodes
}

var (
	_ fs.NodeGetattrer   = (*diffNode)(nil)
	_ fs.NodeGetxattrer  = (*diffNode)(nil)
	_ fs.NodeListxattrer = (*diffNode)(nil)
	_ fs.NodeAccesser    = (*diffNode)(nil)
)

func (n *diffNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.v.tree.fillAttr(n.k, n.v.diffIno(n.k), &out.Attr)
	return 0
}

func (n *diffNode) Getxattr(_ context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return n.v.tree.getxattr(n.k, attr, dest)
}

func (n *diffNode) Listxattr(_ context.Context, dest []byte) (uint32, syscall.Errno) {
	return n.v.tree.listxattr(n.k, dest)
}

func (n *diffNode) Access(ctx context.Context, mask uint32) syscall.Errno {
	var a fuse.Attr
	n.v.tree.fillAttr(n.k, n.v.diffIno(n.k), &a)
	return access(ctx, &a, mask)
}

// newChild returns the Inode of diff inode k below parent and fills out.
func (v *layerView) newChild(ctx context.Context, parent *fs.Inode, k int32, out *fuse.EntryOut) *fs.Inode {
	ino := v.diffIno(k)
	v.tree.fillAttr(k, ino, &out.Attr)
	var ops fs.InodeEmbedder
	kind := v.tree.inodes[k].kind()
	switch kind {
	case syscall.S_IFDIR:
		ops = &dirNode{diffNode: diffNode{v: v, k: k}}
	case syscall.S_IFREG:
		ops = &fileNode{diffNode{v: v, k: k}}
	case syscall.S_IFLNK:
		ops = &symlinkNode{diffNode{v: v, k: k}}
	default:
		ops = &specialNode{diffNode{v: v, k: k}}
	}
	return parent.NewInode(ctx, ops, fs.StableAttr{Mode: kind, Ino: ino})
}

// dirNode is a directory of a diff tree.
type dirNode struct {
	diffNode
	roDir
}

var (
	_ fs.NodeLookuper       = (*dirNode)(nil)
	_ fs.NodeOpendirHandler = (*dirNode)(nil)
	_ fs.NodeStatfser       = (*dirNode)(nil)
	_ fs.NodeSetattrer      = (*dirNode)(nil)
)

// The methods both embedded structs have are resolved here.

func (n *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	return n.diffNode.Statfs(ctx, out)
}

func (n *dirNode) Setattr(context.Context, fs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (n *dirNode) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	return syscall.EROFS
}

func (n *dirNode) Removexattr(context.Context, string) syscall.Errno {
	return syscall.EROFS
}

func (n *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	k, ok := n.v.tree.lookup(n.k, name)
	if !ok {
		return nil, syscall.ENOENT
	}
	return n.v.newChild(ctx, &n.Inode, k, out), 0
}

// OpendirHandle lists "." and "..", then the entries sorted by name. The
// listing never changes, so the kernel may cache it.
func (n *dirNode) OpendirHandle(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	v, t := n.v, n.v.tree
	self := v.diffIno(n.k)
	parent := v.ino // the layer directory holds the diff root
	if p := t.inodes[n.k].parent; p >= 0 {
		parent = v.diffIno(p)
	}
	ents := t.children(n.k)
	h := &dirHandle{n: len(ents) + 2, entry: func(i int) fuse.DirEntry {
		switch i {
		case 0:
			return fuse.DirEntry{Name: ".", Ino: self, Mode: syscall.S_IFDIR}
		case 1:
			return fuse.DirEntry{Name: "..", Ino: parent, Mode: syscall.S_IFDIR}
		}
		e := ents[i-2]
		return fuse.DirEntry{Name: e.name, Ino: v.diffIno(e.ino), Mode: t.inodes[e.ino].kind()}
	}}
	return h, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// fileNode is a regular file of a diff tree.
type fileNode struct{ diffNode }

var (
	_ fs.NodeOpener  = (*fileNode)(nil)
	_ fs.NodeReader  = (*fileNode)(nil)
	_ fs.NodeWriter  = (*fileNode)(nil)
	_ fs.NodeLseeker = (*fileNode)(nil)
)

func (n *fileNode) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if errno := openReadOnly(flags); errno != 0 {
		return nil, 0, errno
	}
	if bf, ok := n.v.content.(BackingFiler); ok {
		if f, ok := bf.BackingFile(int(n.v.tree.inodes[n.k].entry)); ok {
			return &backedFile{f: f}, openFlags, 0
		}
	}
	return nil, openFlags, 0
}

// backedFile is an open file that the kernel reads from a backing file
// (FUSE passthrough, where the kernel and the daemon's privileges allow
// it); otherwise reads come to fileNode.Read as usual.
type backedFile struct{ f *os.File }

var (
	_ fs.FilePassthroughFder = (*backedFile)(nil)
	_ fs.FileReleaser        = (*backedFile)(nil)
)

func (b *backedFile) PassthroughFd() (int, bool) { return int(b.f.Fd()), true }

func (b *backedFile) Release(context.Context) syscall.Errno {
	b.f.Close()
	return 0
}

// Read fills dest unless the file ends first: the kernel takes a short
// read for the end of the file.
func (n *fileNode) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	in := &n.v.tree.inodes[n.k]
	if off < 0 || off >= in.size {
		return fuse.ReadResultData(nil), 0
	}
	want := int(min(int64(len(dest)), in.size-off))
	got := 0
	for got < want {
		m, err := n.v.content.ReadFile(ctx, int(in.entry), dest[got:want], off+int64(got))
		got += m
		if err != nil && (!errors.Is(err, io.EOF) || got < want) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, dataErrno(err)
		}
		if m == 0 && got < want {
			return nil, dataErrno(io.ErrNoProgress)
		}
	}
	return fuse.ReadResultData(dest[:got]), 0
}

func (n *fileNode) Write(context.Context, fs.FileHandle, []byte, int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

func (n *fileNode) Lseek(_ context.Context, _ fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	return seekDense(n.v.tree.inodes[n.k].size, off, whence)
}

// symlinkNode is a symbolic link of a diff tree.
type symlinkNode struct{ diffNode }

var _ fs.NodeReadlinker = (*symlinkNode)(nil)

func (n *symlinkNode) Readlink(context.Context) ([]byte, syscall.Errno) {
	return []byte(n.v.tree.inodes[n.k].link), 0
}

// specialNode is a device, a fifo or a whiteout of a diff tree; the kernel
// handles opening them.
type specialNode struct{ diffNode }
