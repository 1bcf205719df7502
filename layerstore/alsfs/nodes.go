package alsfs

import (
	"context"
	"errors"
	"io"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The directories above the diff trees: the root, one directory per image
// ref, one per layer, and the layer's files info and blob.

const rootIno = 1

// rootNode is <mnt>.
type rootNode struct {
	fs.Inode
	roDir
	f *filesystem
}

var (
	_ fs.NodeLookuper       = (*rootNode)(nil)
	_ fs.NodeGetattrer      = (*rootNode)(nil)
	_ fs.NodeOpendirHandler = (*rootNode)(nil)
	_ fs.NodeRmdirer        = (*rootNode)(nil)
	_ fs.NodeAccesser       = (*rootNode)(nil)
)

func (n *rootNode) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.f.owner.dirAttr(rootIno, 2, n.f.created.Unix(), &out.Attr)
	return 0
}

func (n *rootNode) Access(ctx context.Context, mask uint32) syscall.Errno {
	var out fuse.AttrOut
	n.Getattr(ctx, nil, &out)
	return access(ctx, &out.Attr, mask)
}

// Lookup resolves <digest> (a store without ":ref") or <base64(ref)>.
func (n *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if d, ok := parseDigest(name); ok {
		return n.f.lookupLayer(ctx, &n.Inode, viewKey{"", d}, out)
	}
	ref, ok := decodeRef(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	ino := n.f.refIno(ref)
	n.f.owner.dirAttr(ino, 2, n.f.created.Unix(), &out.Attr)
	out.SetEntryTimeout(n.f.opts.LayerDirTimeout)
	return n.NewInode(ctx, &refDir{f: n.f, ref: ref, ino: ino}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino}), 0
}

// Rmdir of a layer directory releases it (containers/storage's
// notifyReleaseAdditionalLayer).
func (n *rootNode) Rmdir(_ context.Context, name string) syscall.Errno {
	return n.f.rmdirLayer("", name)
}

func (n *rootNode) OpendirHandle(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	entries := append([]fuse.DirEntry{
		{Name: ".", Ino: rootIno, Mode: syscall.S_IFDIR},
		{Name: "..", Ino: rootIno, Mode: syscall.S_IFDIR},
	}, n.f.rootEntries()...)
	return listHandle(entries), 0, 0
}

// refDir is <mnt>/<base64(ref)>.
type refDir struct {
	fs.Inode
	roDir
	f   *filesystem
	ref string
	ino uint64
}

var (
	_ fs.NodeLookuper       = (*refDir)(nil)
	_ fs.NodeGetattrer      = (*refDir)(nil)
	_ fs.NodeOpendirHandler = (*refDir)(nil)
	_ fs.NodeRmdirer        = (*refDir)(nil)
	_ fs.NodeAccesser       = (*refDir)(nil)
)

func (n *refDir) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.f.owner.dirAttr(n.ino, 2, n.f.created.Unix(), &out.Attr)
	return 0
}

func (n *refDir) Access(ctx context.Context, mask uint32) syscall.Errno {
	var out fuse.AttrOut
	n.Getattr(ctx, nil, &out)
	return access(ctx, &out.Attr, mask)
}

func (n *refDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	d, ok := parseDigest(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	return n.f.lookupLayer(ctx, &n.Inode, viewKey{n.ref, d}, out)
}

func (n *refDir) Rmdir(_ context.Context, name string) syscall.Errno {
	return n.f.rmdirLayer(n.ref, name)
}

func (n *refDir) OpendirHandle(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	entries := []fuse.DirEntry{
		{Name: ".", Ino: n.ino, Mode: syscall.S_IFDIR},
		{Name: "..", Ino: rootIno, Mode: syscall.S_IFDIR},
	}
	for _, v := range n.f.refViews(n.ref) {
		entries = append(entries, fuse.DirEntry{Name: v.key.digest.String(), Ino: v.ino, Mode: syscall.S_IFDIR})
	}
	return listHandle(entries), 0, 0
}

// lookupLayer answers the lookup of a layer directory.
func (f *filesystem) lookupLayer(ctx context.Context, parent *fs.Inode, key viewKey, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	v, errno := f.view(key)
	if errno != 0 {
		return nil, errno
	}
	f.owner.dirAttr(v.ino, 3, v.created.Unix(), &out.Attr)
	out.SetEntryTimeout(f.opts.LayerDirTimeout)
	in := parent.NewInode(ctx, &layerDir{f: f, v: v}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: v.ino})
	f.setInode(v, in)
	return in, 0
}

// rmdirLayer is the host releasing a layer: the store counts it and
// answers ENOENT, which the host expects from a store that counts
// references.
func (f *filesystem) rmdirLayer(ref, name string) syscall.Errno {
	d, ok := parseDigest(name)
	if !ok {
		return syscall.EROFS
	}
	f.resolver.Release(ref, d)
	return syscall.ENOENT
}

// parentIno is the inode number of the directory holding the view.
func (f *filesystem) parentIno(key viewKey) uint64 {
	if key.ref == "" {
		return rootIno
	}
	return f.refIno(key.ref)
}

// layerDir is <mnt>[/<base64(ref)>]/<digest>.
type layerDir struct {
	fs.Inode
	roDir
	f *filesystem
	v *layerView
}

var (
	_ fs.NodeLookuper       = (*layerDir)(nil)
	_ fs.NodeGetattrer      = (*layerDir)(nil)
	_ fs.NodeOpendirHandler = (*layerDir)(nil)
	_ fs.NodeCreater        = (*layerDir)(nil)
	_ fs.NodeAccesser       = (*layerDir)(nil)
	_ fs.NodeOnForgetter    = (*layerDir)(nil)
)

// OnForget is the kernel letting go of the layer directory (and, as go-fuse
// keeps parents of live nodes, of every node below it).
func (n *layerDir) OnForget() { n.f.forget(n.v) }

// Names in a layer directory.
const (
	diffName = "diff"
	infoName = "info"
	blobName = "blob"
	useName  = "use"
)

func (n *layerDir) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.f.owner.dirAttr(n.v.ino, 3, n.v.created.Unix(), &out.Attr)
	return 0
}

func (n *layerDir) Access(ctx context.Context, mask uint32) syscall.Errno {
	var out fuse.AttrOut
	n.Getattr(ctx, nil, &out)
	return access(ctx, &out.Attr, mask)
}

func (n *layerDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	v := n.v
	switch name {
	case diffName:
		return v.newChild(ctx, &n.Inode, 0, out), 0
	case infoName:
		n.f.owner.fileAttr(v.ino+infoInoOffset, int64(len(v.info)), v.created.Unix(), &out.Attr)
		return n.NewInode(ctx, &infoFile{v: v}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: v.ino + infoInoOffset}), 0
	case blobName:
		n.f.owner.fileAttr(v.ino+blobInoOffset, v.blobSize, v.created.Unix(), &out.Attr)
		return n.NewInode(ctx, &blobFile{v: v}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: v.ino + blobInoOffset}), 0
	}
	return nil, syscall.ENOENT
}

// Create of `use` is the host taking a reference (containers/storage's
// notifyUseAdditionalLayer): the store counts it and answers ENOENT.
func (n *layerDir) Create(_ context.Context, name string, _, _ uint32, _ *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if name != useName {
		return nil, nil, 0, syscall.EROFS
	}
	n.f.resolver.Use(n.v.key.ref, n.v.key.digest)
	return nil, nil, 0, syscall.ENOENT
}

func (n *layerDir) OpendirHandle(context.Context, uint32) (fs.FileHandle, uint32, syscall.Errno) {
	v := n.v
	return listHandle([]fuse.DirEntry{
		{Name: ".", Ino: v.ino, Mode: syscall.S_IFDIR},
		{Name: "..", Ino: n.f.parentIno(v.key), Mode: syscall.S_IFDIR},
		{Name: blobName, Ino: v.ino + blobInoOffset, Mode: syscall.S_IFREG},
		{Name: diffName, Ino: v.diffIno(0), Mode: syscall.S_IFDIR},
		{Name: infoName, Ino: v.ino + infoInoOffset, Mode: syscall.S_IFREG},
	}), 0, 0
}

// infoFile is the layer's `info`, fixed when the layer was looked up.
type infoFile struct {
	fs.Inode
	roNode
	v *layerView
}

var (
	_ fs.NodeGetattrer = (*infoFile)(nil)
	_ fs.NodeOpener    = (*infoFile)(nil)
	_ fs.NodeReader    = (*infoFile)(nil)
	_ fs.NodeLseeker   = (*infoFile)(nil)
	_ fs.NodeAccesser  = (*infoFile)(nil)
)

func (n *infoFile) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.v.owner.fileAttr(n.v.ino+infoInoOffset, int64(len(n.v.info)), n.v.created.Unix(), &out.Attr)
	return 0
}

func (n *infoFile) Access(ctx context.Context, mask uint32) syscall.Errno {
	var out fuse.AttrOut
	n.Getattr(ctx, nil, &out)
	return access(ctx, &out.Attr, mask)
}

func (n *infoFile) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, openFlags, openReadOnly(flags)
}

func (n *infoFile) Read(_ context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	info := n.v.info
	if off >= int64(len(info)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(info[off:min(int64(len(info)), off+int64(len(dest)))]), 0
}

func (n *infoFile) Lseek(_ context.Context, _ fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	return seekDense(int64(len(n.v.info)), off, whence)
}

// blobFile is the layer's `blob`: the compressed layer.
type blobFile struct {
	fs.Inode
	roNode
	v *layerView
}

var (
	_ fs.NodeGetattrer = (*blobFile)(nil)
	_ fs.NodeOpener    = (*blobFile)(nil)
	_ fs.NodeReader    = (*blobFile)(nil)
	_ fs.NodeLseeker   = (*blobFile)(nil)
	_ fs.NodeAccesser  = (*blobFile)(nil)
)

func (n *blobFile) Getattr(_ context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.v.owner.fileAttr(n.v.ino+blobInoOffset, n.v.blobSize, n.v.created.Unix(), &out.Attr)
	return 0
}

func (n *blobFile) Access(ctx context.Context, mask uint32) syscall.Errno {
	var out fuse.AttrOut
	n.Getattr(ctx, nil, &out)
	return access(ctx, &out.Attr, mask)
}

func (n *blobFile) Open(_ context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, openFlags, openReadOnly(flags)
}

func (n *blobFile) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := n.v.blobSize
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	p := dest[:min(int64(len(dest)), size-off)]
	var got int
	var err error
	if cr, ok := n.v.blob.(ContextReaderAt); ok {
		got, err = cr.ReadAtContext(ctx, p, off)
	} else {
		got, err = n.v.blob.ReadAt(p, off)
	}
	if got == len(p) && (err == nil || errors.Is(err, io.EOF)) {
		return fuse.ReadResultData(p), 0
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return nil, dataErrno(err)
}

func (n *blobFile) Lseek(_ context.Context, _ fs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	return seekDense(n.v.blobSize, off, whence)
}
