package alsfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"
)

// rawFS drives the filesystem through go-fuse's raw protocol interface,
// without a mount.
type rawFS struct {
	t   *testing.T
	raw fuse.RawFileSystem
	f   *filesystem
}

func newRawFS(t *testing.T, r Resolver, opts Options) *rawFS {
	f := newFilesystem(r, opts)
	t.Cleanup(f.close)
	return &rawFS{t: t, raw: fs.NewNodeFS(&rootNode{f: f}, f.nodeFSOptions()), f: f}
}

func (r *rawFS) lookup(parent uint64, name string) (fuse.EntryOut, fuse.Status) {
	return r.lookupCancel(parent, name, nil)
}

func (r *rawFS) lookupCancel(parent uint64, name string, cancel <-chan struct{}) (fuse.EntryOut, fuse.Status) {
	var out fuse.EntryOut
	st := r.raw.Lookup(cancel, &fuse.InHeader{NodeId: parent}, name, &out)
	return out, st
}

// walk looks up a /-separated path from the root and returns its node ID.
func (r *rawFS) walk(path string) uint64 {
	r.t.Helper()
	id := uint64(rootIno)
	for _, name := range strings.Split(path, "/") {
		out, st := r.lookup(id, name)
		if st != fuse.OK {
			r.t.Fatalf("lookup %q of %q = %v", name, path, st)
		}
		id = out.NodeId
	}
	return id
}

const testRef = "127.0.0.1:5000/app/big:gzip"

func simpleLayer(t *testing.T) *testLayer {
	return newTestLayer(t, []tarEntry{
		{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		{name: "etc/hostname", typ: tar.TypeReg, mode: 0o644, data: []byte("box\n"),
			xattrs: map[string]string{"user.long": strings.Repeat("v", 100)}},
	})
}

func TestNodeLookupNames(t *testing.T) {
	d := layerDigest("layer")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	fsys := newRawFS(t, r, Options{})
	refName := encodeRef(testRef)

	tests := []struct {
		path string // parent path ("" is the root)
		name string
		want fuse.Status
	}{
		{"", "not base64!", fuse.ENOENT},
		{"", "QQ", fuse.ENOENT},                  // missing padding
		{"", "QR==", fuse.ENOENT},                // non-canonical padding bits
		{"", encodeRef("a\nb"), fuse.ENOENT},     // control character
		{"", encodeRef("\xff\xfe"), fuse.ENOENT}, // not UTF-8
		{"", "sha256:abc", fuse.ENOENT},          // invalid digest
		{"", strings.ToUpper(d.String()), fuse.ENOENT},
		{"", layerDigest("unknown").String(), fuse.ENOENT},
		{"", refName, fuse.OK},
		{refName, "diff", fuse.ENOENT},
		{refName, layerDigest("unknown").String(), fuse.ENOENT},
		{refName, d.String(), fuse.OK},
		{refName + "/" + d.String(), "diff", fuse.OK},
		{refName + "/" + d.String(), "info", fuse.OK},
		{refName + "/" + d.String(), "blob", fuse.OK},
		{refName + "/" + d.String(), "use", fuse.ENOENT},
		{refName + "/" + d.String(), "diff1", fuse.ENOENT},
		{refName + "/" + d.String(), "DIFF", fuse.ENOENT},
		{refName + "/" + d.String() + "/diff", "etc", fuse.OK},
		{refName + "/" + d.String() + "/diff/etc", "passwd", fuse.ENOENT},
	}
	for _, tc := range tests {
		parent := uint64(rootIno)
		if tc.path != "" {
			parent = fsys.walk(tc.path)
		}
		_, got := fsys.lookup(parent, tc.name)
		if got != tc.want {
			t.Errorf("Lookup(%q in %q) = %v, want %v", tc.name, tc.path, got, tc.want)
		}
	}
}

// TestNodeUseRelease checks the reference-counting protocol of
// containers/storage: create `use` and rmdir of the layer directory answer
// ENOENT and are counted.
func TestNodeUseRelease(t *testing.T) {
	d := layerDigest("layer")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	r.add("", d, simpleLayer(t))
	fsys := newRawFS(t, r, Options{})
	refID := fsys.walk(encodeRef(testRef))
	layerID := fsys.walk(encodeRef(testRef) + "/" + d.String())

	create := func(parent uint64, name string) fuse.Status {
		var out fuse.CreateOut
		return fsys.raw.Create(nil, &fuse.CreateIn{InHeader: fuse.InHeader{NodeId: parent},
			Flags: syscall.O_RDWR | syscall.O_CREAT | syscall.O_TRUNC, Mode: 0o666}, name, &out)
	}
	for i := 1; i <= 3; i++ {
		if st := create(layerID, "use"); st != fuse.ENOENT {
			t.Fatalf("create use = %v, want ENOENT", st)
		}
		if _, uses, _ := r.counts(testRef, d); uses != i {
			t.Fatalf("after %d creates of use: Use called %d times", i, uses)
		}
	}
	if st := create(layerID, "other"); st != fuse.EROFS {
		t.Errorf("create other = %v, want EROFS", st)
	}
	if st := fsys.raw.Rmdir(nil, &fuse.InHeader{NodeId: refID}, d.String()); st != fuse.ENOENT {
		t.Errorf("rmdir layer = %v, want ENOENT", st)
	}
	if _, _, releases := r.counts(testRef, d); releases != 1 {
		t.Errorf("Release called %d times, want 1", releases)
	}
	if st := fsys.raw.Rmdir(nil, &fuse.InHeader{NodeId: refID}, "notadigest"); st != fuse.EROFS {
		t.Errorf("rmdir notadigest = %v, want EROFS", st)
	}
	// The layer directory is still there after the release.
	if _, st := fsys.lookup(refID, d.String()); st != fuse.OK {
		t.Errorf("lookup after release = %v, want OK", st)
	}
	// Without :ref.
	if st := fsys.raw.Rmdir(nil, &fuse.InHeader{NodeId: rootIno}, d.String()); st != fuse.ENOENT {
		t.Errorf("rmdir <digest> at the root = %v, want ENOENT", st)
	}
	if _, _, releases := r.counts("", d); releases != 1 {
		t.Errorf(`Release("") called %d times, want 1`, releases)
	}
}

func TestNodeReadOnly(t *testing.T) {
	d := layerDigest("layer")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	fsys := newRawFS(t, r, Options{})
	base := encodeRef(testRef) + "/" + d.String()
	diffID := fsys.walk(base + "/diff")
	fileID := fsys.walk(base + "/diff/etc/hostname")
	layerID := fsys.walk(base)
	infoID := fsys.walk(base + "/info")
	h := func(id uint64) fuse.InHeader { return fuse.InHeader{NodeId: id} }
	hp := func(id uint64) *fuse.InHeader { return &fuse.InHeader{NodeId: id} }

	var entry fuse.EntryOut
	var attr fuse.AttrOut
	var create fuse.CreateOut
	var open fuse.OpenOut
	tests := []struct {
		op string
		st fuse.Status
	}{
		{"mkdir in diff", fsys.raw.Mkdir(nil, &fuse.MkdirIn{InHeader: h(diffID), Mode: 0o755}, "x", &entry)},
		{"mkdir in layer dir", fsys.raw.Mkdir(nil, &fuse.MkdirIn{InHeader: h(layerID), Mode: 0o755}, "x", &entry)},
		{"mkdir at root", fsys.raw.Mkdir(nil, &fuse.MkdirIn{InHeader: h(rootIno), Mode: 0o755}, "x", &entry)},
		{"mknod", fsys.raw.Mknod(nil, &fuse.MknodIn{InHeader: h(diffID), Mode: syscall.S_IFIFO}, "x", &entry)},
		{"create in diff", fsys.raw.Create(nil, &fuse.CreateIn{InHeader: h(diffID), Flags: syscall.O_WRONLY}, "use", &create)},
		{"unlink in diff", fsys.raw.Unlink(nil, hp(diffID), "etc")},
		{"unlink info", fsys.raw.Unlink(nil, hp(layerID), "info")},
		{"rmdir in diff", fsys.raw.Rmdir(nil, hp(diffID), "etc")},
		{"rmdir diff", fsys.raw.Rmdir(nil, hp(layerID), "diff")},
		{"symlink", fsys.raw.Symlink(nil, hp(diffID), "target", "x", &entry)},
		{"link", fsys.raw.Link(nil, &fuse.LinkIn{InHeader: h(diffID), Oldnodeid: fileID}, "x", &entry)},
		{"rename", fsys.raw.Rename(nil, &fuse.RenameIn{InHeader: h(diffID), Newdir: diffID}, "etc", "etc2")},
		{"setattr", fsys.raw.SetAttr(nil, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{InHeader: h(fileID), Valid: fuse.FATTR_MODE, Mode: 0o777}}, &attr)},
		{"setattr dir", fsys.raw.SetAttr(nil, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{InHeader: h(diffID), Valid: fuse.FATTR_MODE, Mode: 0o777}}, &attr)},
		{"setattr info", fsys.raw.SetAttr(nil, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{InHeader: h(infoID), Valid: fuse.FATTR_SIZE}}, &attr)},
		{"setxattr", fsys.raw.SetXAttr(nil, &fuse.SetXAttrIn{InHeader: h(fileID)}, "user.x", []byte("y"))},
		{"setxattr dir", fsys.raw.SetXAttr(nil, &fuse.SetXAttrIn{InHeader: h(diffID)}, "user.x", []byte("y"))},
		{"removexattr", fsys.raw.RemoveXAttr(nil, hp(fileID), "user.long")},
		{"open for writing", fsys.raw.Open(nil, &fuse.OpenIn{InHeader: h(fileID), Flags: syscall.O_RDWR}, &open)},
		{"open with O_TRUNC", fsys.raw.Open(nil, &fuse.OpenIn{InHeader: h(fileID), Flags: syscall.O_RDONLY | syscall.O_TRUNC}, &open)},
		{"open info for writing", fsys.raw.Open(nil, &fuse.OpenIn{InHeader: h(infoID), Flags: syscall.O_WRONLY}, &open)},
	}
	for _, tc := range tests {
		if tc.st != fuse.EROFS {
			t.Errorf("%s = %v, want EROFS", tc.op, tc.st)
		}
	}
	if _, st := fsys.lookup(diffID, "etc"); st != fuse.OK {
		t.Errorf("etc after the refused changes: lookup = %v, want OK", st)
	}
}

func TestNodeXattrSizes(t *testing.T) {
	d := layerDigest("layer")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	fsys := newRawFS(t, r, Options{})
	id := fsys.walk(encodeRef(testRef) + "/" + d.String() + "/diff/etc/hostname")
	h := &fuse.InHeader{NodeId: id}
	tests := []struct {
		name    string
		bufSize int
		wantN   uint32
		wantSt  fuse.Status
	}{
		{"user.long", 100, 100, fuse.OK},
		{"user.long", 200, 100, fuse.OK},
		{"user.long", 99, 100, fuse.Status(syscall.ERANGE)},
		{"user.none", 10, 0, fuse.ENOATTR},
	}
	for _, tc := range tests {
		n, st := fsys.raw.GetXAttr(nil, h, tc.name, make([]byte, tc.bufSize))
		if st != tc.wantSt || (st == fuse.OK || st == fuse.Status(syscall.ERANGE)) && n != tc.wantN {
			t.Errorf("GetXAttr(%s, %d bytes) = %d, %v, want %d, %v", tc.name, tc.bufSize, n, st, tc.wantN, tc.wantSt)
		}
	}
	if n, st := fsys.raw.ListXAttr(nil, h, make([]byte, 3)); st != fuse.Status(syscall.ERANGE) || n != uint32(len("user.long\x00")) {
		t.Errorf("ListXAttr(3 bytes) = %d, %v, want %d, ERANGE", n, st, len("user.long\x00"))
	}
	buf := make([]byte, 64)
	if n, st := fsys.raw.ListXAttr(nil, h, buf); st != fuse.OK || string(buf[:n]) != "user.long\x00" {
		t.Errorf("ListXAttr = %q, %v, want %q", buf[:n], st, "user.long\x00")
	}
}

// TestNodeConcurrentLookups looks up the same layers of two images from 50
// goroutines each while the resolver is held: every lookup of one layer
// must get the same node and inode, and the resolver must run once per
// layer.
func TestNodeConcurrentLookups(t *testing.T) {
	d := layerDigest("layer")
	refs := []string{"reg.example/a:1", "reg.example/b:2"}
	r := newTestResolver()
	for _, ref := range refs {
		r.add(ref, d, simpleLayer(t))
	}
	r.gate = make(chan struct{})
	fsys := newRawFS(t, r, Options{})
	refIDs := make([]uint64, len(refs))
	for i, ref := range refs {
		refIDs[i] = fsys.walk(encodeRef(ref))
	}

	const n = 50
	type result struct {
		node, ino uint64
		st        fuse.Status
	}
	results := make([][]result, len(refs))
	var started, done sync.WaitGroup
	for i := range refs {
		results[i] = make([]result, n)
		for j := range n {
			started.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				started.Done()
				out, st := fsys.lookup(refIDs[i], d.String())
				results[i][j] = result{out.NodeId, out.Attr.Ino, st}
			}()
		}
	}
	started.Wait()
	close(r.gate)
	done.Wait()

	var inos []uint64
	for i, ref := range refs {
		first := results[i][0]
		for j, res := range results[i] {
			if res != first || res.st != fuse.OK {
				t.Errorf("%s lookup %d = %+v, lookup 0 = %+v; want equal and OK", ref, j, res, first)
			}
		}
		if lookups, _, _ := r.counts(ref, d); lookups != 1 {
			t.Errorf("%s: Resolver.Lookup called %d times, want 1", ref, lookups)
		}
		inos = append(inos, first.ino)
	}
	if inos[0] == inos[1] {
		t.Errorf("layer directories of two images share inode %d", inos[0])
	}
}

// TestNodeInterruptedLookup checks that an interrupt does not fail a
// lookup: the answer comes when the resolver has one.
func TestNodeInterruptedLookup(t *testing.T) {
	d := layerDigest("layer")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	r.gate = make(chan struct{})
	fsys := newRawFS(t, r, Options{})
	refID := fsys.walk(encodeRef(testRef))

	cancel := make(chan struct{})
	close(cancel)
	time.AfterFunc(20*time.Millisecond, func() { close(r.gate) })
	if _, st := fsys.lookupCancel(refID, d.String(), cancel); st != fuse.OK {
		t.Fatalf("interrupted lookup = %v, want OK", st)
	}
	if lookups, _, _ := r.counts(testRef, d); lookups != 1 {
		t.Errorf("Resolver.Lookup called %d times, want 1", lookups)
	}
}

// TestNodeUnmountDuringLookup checks that unmounting ends a lookup the
// resolver is still working on.
func TestNodeUnmountDuringLookup(t *testing.T) {
	d := layerDigest("layer")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	r.gate = make(chan struct{}) // never opened: only the unmount ends the lookup
	fsys := newRawFS(t, r, Options{})
	refID := fsys.walk(encodeRef(testRef))
	time.AfterFunc(20*time.Millisecond, fsys.f.close)
	if _, st := fsys.lookup(refID, d.String()); st != fuse.ENOENT {
		t.Fatalf("lookup ended by unmount = %v, want ENOENT", st)
	}
	if _, st := fsys.lookup(refID, d.String()); st != fuse.ENOENT {
		t.Fatalf("lookup after unmount = %v, want ENOENT", st)
	}
}

func TestNodeFailuresAreNotCached(t *testing.T) {
	d := layerDigest("layer")
	r := newTestResolver()
	r.add(testRef, d, simpleLayer(t))
	r.setFail(testRef, d, errors.New("registry unreachable"))
	fsys := newRawFS(t, r, Options{})
	refID := fsys.walk(encodeRef(testRef))
	if _, st := fsys.lookup(refID, d.String()); st != fuse.ENOENT {
		t.Fatalf("lookup while the resolver fails = %v, want ENOENT", st)
	}
	r.setFail(testRef, d, nil)
	if _, st := fsys.lookup(refID, d.String()); st != fuse.OK {
		t.Fatalf("lookup after the resolver recovered = %v, want OK", st)
	}
	if lookups, _, _ := r.counts(testRef, d); lookups != 2 {
		t.Errorf("Resolver.Lookup called %d times, want 2", lookups)
	}
}

func TestNodeRefusedLayers(t *testing.T) {
	bad := newTestLayer(t, []tarEntry{{name: "l", typ: tar.TypeLink, link: "missing"}})
	badInfo := simpleLayer(t)
	badInfo.info = []byte(`not json`)
	arrayInfo := simpleLayer(t)
	arrayInfo.info = []byte(`[1]`)
	r := newTestResolver()
	layers := map[digest.Digest]*testLayer{
		layerDigest("bad tree"): bad, layerDigest("bad info"): badInfo, layerDigest("array info"): arrayInfo,
	}
	for d, l := range layers {
		r.add(testRef, d, l)
	}
	logger, hook := logtest.NewNullLogger()
	fsys := newRawFS(t, r, Options{Log: logrus.NewEntry(logger)})
	refID := fsys.walk(encodeRef(testRef))
	for d := range layers {
		if _, st := fsys.lookup(refID, d.String()); st != fuse.ENOENT {
			t.Errorf("lookup of refused layer %s = %v, want ENOENT", d, st)
		}
	}
	var warned bool
	for _, e := range hook.AllEntries() {
		if err, _ := e.Data[logrus.ErrorKey].(error); e.Level == logrus.WarnLevel && errors.Is(err, ErrInvalidLayer) &&
			e.Data["layer"] == layerDigest("bad tree") && strings.Contains(err.Error(), "missing") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning naming the refused layer and its missing link target; log: %v", hook.AllEntries())
	}
}

// TestNodeWithoutRef covers <mnt>/<digest>: the resolver is asked with ref
// "" (it answers for layers it serves already), and the directory is a
// view of its own.
func TestNodeWithoutRef(t *testing.T) {
	seen, unseen := layerDigest("seen"), layerDigest("unseen")
	r := newTestResolver()
	r.add(testRef, seen, simpleLayer(t))
	r.add("", seen, simpleLayer(t))
	fsys := newRawFS(t, r, Options{})
	viaRef := fsys.walk(encodeRef(testRef) + "/" + seen.String() + "/diff/etc/hostname")
	direct := fsys.walk(seen.String() + "/diff/etc/hostname")
	if lookups, _, _ := r.counts("", seen); lookups != 1 {
		t.Errorf(`Resolver.Lookup("", seen) called %d times, want 1`, lookups)
	}
	if viaRef == direct {
		t.Errorf("a file seen through two layer directories has one node %d, want one per directory", direct)
	}
	if _, st := fsys.lookup(fuse.FUSE_ROOT_ID, unseen.String()); st != fuse.ENOENT {
		t.Errorf("lookup of a layer the resolver does not know without a ref = %v, want ENOENT", st)
	}
}

// failingContent returns a fixed error or ends early: faults that a real
// LayerContent produces only when the registry or the cache misbehaves.
type failingContent struct {
	tarContent
	err   error
	short bool // return io.EOF after half of the file
}

func (c *failingContent) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	if c.short {
		half := c.entries[i].UncompressedSize / 2
		if off >= half {
			return 0, io.EOF
		}
		return c.tarContent.ReadFile(ctx, i, p[:min(int64(len(p)), half-off)], off)
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.tarContent.ReadFile(ctx, i, p, off)
}

func TestNodeReadErrors(t *testing.T) {
	layer := simpleLayer(t)
	base := layer.content.(*tarContent)
	tests := []struct {
		name    string
		content LayerContent
		cancel  bool
		want    fuse.Status
	}{
		{"ok", base, false, fuse.OK},
		{"interrupted", base, true, fuse.EINTR},
		{"data error", &failingContent{tarContent: *base, err: errors.New("span digest mismatch")}, false, fuse.EIO},
		{"deadline", &failingContent{tarContent: *base, err: fmt.Errorf("fetch: %w", context.DeadlineExceeded)}, false, fuse.EINTR},
		{"file ends early", &failingContent{tarContent: *base, short: true}, false, fuse.EIO},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := layerDigest("layer")
			r := newTestResolver()
			r.add(testRef, d, &testLayer{info: layer.info, blob: layer.blob, content: tc.content})
			fsys := newRawFS(t, r, Options{})
			id := fsys.walk(encodeRef(testRef) + "/" + d.String() + "/diff/etc/hostname")
			var open fuse.OpenOut
			if st := fsys.raw.Open(nil, &fuse.OpenIn{InHeader: fuse.InHeader{NodeId: id}, Flags: syscall.O_RDONLY}, &open); st != fuse.OK {
				t.Fatalf("open = %v", st)
			}
			if open.OpenFlags&fuse.FOPEN_KEEP_CACHE == 0 {
				t.Errorf("open flags %#x lack FOPEN_KEEP_CACHE", open.OpenFlags)
			}
			var cancel chan struct{}
			if tc.cancel {
				cancel = make(chan struct{})
				close(cancel)
			}
			buf := make([]byte, 4096)
			res, st := fsys.raw.Read(cancel, &fuse.ReadIn{InHeader: fuse.InHeader{NodeId: id}, Fh: open.Fh, Size: 4096}, buf)
			if st != tc.want {
				t.Fatalf("read = %v, want %v", st, tc.want)
			}
			if st == fuse.OK {
				data, _ := res.Bytes(buf)
				if string(data) != "box\n" {
					t.Errorf("read = %q, want %q", data, "box\n")
				}
			}
		})
	}
}

func TestAccess(t *testing.T) {
	attr := func(mode, uid, gid uint32) *fuse.Attr {
		return &fuse.Attr{Mode: mode, Owner: fuse.Owner{Uid: uid, Gid: gid}}
	}
	caller := func(uid, gid uint32) context.Context {
		return &fuse.Context{Caller: fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: gid}}}
	}
	tests := []struct {
		name string
		ctx  context.Context
		a    *fuse.Attr
		mask uint32
		want syscall.Errno
	}{
		{"root reads 0000", caller(0, 0), attr(syscall.S_IFREG, 1, 1), unix.R_OK, 0},
		{"root writes", caller(0, 0), attr(syscall.S_IFREG|0o777, 0, 0), unix.W_OK, syscall.EROFS},
		{"root runs non-executable", caller(0, 0), attr(syscall.S_IFREG|0o644, 0, 0), unix.X_OK, syscall.EACCES},
		{"root runs group-executable", caller(0, 0), attr(syscall.S_IFREG|0o010, 5, 5), unix.X_OK, 0},
		{"root enters 0000 dir", caller(0, 0), attr(syscall.S_IFDIR, 5, 5), unix.X_OK, 0},
		{"owner reads 0400", caller(5, 6), attr(syscall.S_IFREG|0o400, 5, 9), unix.R_OK, 0},
		{"owner runs 0400", caller(5, 6), attr(syscall.S_IFREG|0o400, 5, 9), unix.X_OK, syscall.EACCES},
		{"group reads 0040", caller(7, 9), attr(syscall.S_IFREG|0o040, 5, 9), unix.R_OK, 0},
		{"other reads 0600", caller(7, 8), attr(syscall.S_IFREG|0o600, 5, 9), unix.R_OK, syscall.EACCES},
		{"other reads 0604", caller(7, 8), attr(syscall.S_IFREG|0o604, 5, 9), unix.R_OK, 0},
		{"owner denied by owner bits", caller(5, 9), attr(syscall.S_IFREG|0o077, 5, 9), unix.R_OK, syscall.EACCES},
		{"exists", caller(7, 8), attr(syscall.S_IFREG, 5, 9), unix.F_OK, 0},
	}
	for _, tc := range tests {
		if got := access(tc.ctx, tc.a, tc.mask); got != tc.want {
			t.Errorf("%s: access = %v, want %v", tc.name, got, tc.want)
		}
	}
}
