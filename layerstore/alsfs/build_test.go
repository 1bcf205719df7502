package alsfs

import (
	"archive/tar"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lazypull/lazypull/ztoc"
)

// treeAt returns the inode at path in t, or -1.
func treeAt(t *tree, path string) int32 {
	k := int32(0)
	if path == "" {
		return k
	}
	for _, c := range strings.Split(path, "/") {
		if t.inodes[k].kind() != syscall.S_IFDIR {
			return -1
		}
		next, ok := t.lookup(k, c)
		if !ok {
			return -1
		}
		k = next
	}
	return k
}

func buildFromTar(t *testing.T, entries []tarEntry) (*tree, error) {
	t.Helper()
	c := newTarContent(t, writeTar(t, entries))
	return buildTree(c.Entries(), []string{TrustedOpaqueXattr, UserOpaqueXattr})
}

func TestBuildTreeRefuses(t *testing.T) {
	reg := func(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeReg, mode: 0o644} }
	dir := func(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
	tests := []struct {
		name    string
		entries []tarEntry
		want    string // substring of the error
	}{
		{"dotdot", []tarEntry{reg("../x")}, "leaves the layer root"},
		{"dotdot inside", []tarEntry{reg("a/../../x")}, "leaves the layer root"},
		{"bare dotdot", []tarEntry{dir("..")}, "leaves the layer root"},
		{"hard link to missing", []tarEntry{{name: "l", typ: tar.TypeLink, link: "nope"}}, "does not exist"},
		{"hard link escaping", []tarEntry{reg("a"), {name: "l", typ: tar.TypeLink, link: "../a"}}, "leaves the layer root"},
		{"hard link to dir", []tarEntry{dir("d"), {name: "l", typ: tar.TypeLink, link: "d"}}, "hard link to directory"},
		{"hard link to itself", []tarEntry{reg("a"), {name: "a", typ: tar.TypeLink, link: "a"}}, "does not exist"},
		{"whiteout of a file of this layer", []tarEntry{reg("f"), reg(".wh.f")}, "EEXIST"},
		{"whiteout of a dir of this layer", []tarEntry{dir("d"), reg("d/x"), reg(".wh.d")}, "EEXIST"},
		{"whiteout naming nothing", []tarEntry{reg(".wh.")}, "names no file"},
		{"device too big", []tarEntry{{name: "d", typ: tar.TypeChar, major: 4096}}, "does not fit"},
		{"minor too big", []tarEntry{{name: "d", typ: tar.TypeBlock, minor: 1 << 20}}, "does not fit"},
		{"name too long", []tarEntry{reg(strings.Repeat("n", 256))}, "longer than 255"},
		{"parent is a file", []tarEntry{reg("f"), reg("f/x")}, "not a directory"},
		{"parent is a symlink", []tarEntry{{name: "l", typ: tar.TypeSymlink, link: "d"}, dir("d"), reg("l/x")}, "not a directory"},
		{"dir mtime after its parent became a file", []tarEntry{dir("a/b"), reg("a")}, "setting the mtime"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := buildFromTar(t, tc.entries)
			if !errors.Is(err, ErrInvalidLayer) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("buildTree = %v, want ErrInvalidLayer containing %q", err, tc.want)
			}
		})
	}
}

// TestValidate covers entries archive/tar cannot write.
func TestValidate(t *testing.T) {
	tests := []struct {
		name  string
		entry ztoc.FileMetadata
		ok    bool
	}{
		{"socket", ztoc.FileMetadata{Name: "s", Type: "socket"}, false},
		{"NUL in name", ztoc.FileMetadata{Name: "a\x00b", Type: ztoc.TypeReg}, false},
		{"root is a file", ztoc.FileMetadata{Name: "/", Type: ztoc.TypeReg}, false},
		{"negative size", ztoc.FileMetadata{Name: "f", Type: ztoc.TypeReg, UncompressedSize: -1}, false},
		{"root dir", ztoc.FileMetadata{Name: "/", Type: ztoc.TypeDir, Mode: 0o700}, true},
		{"dot is ignored whatever it is", ztoc.FileMetadata{Name: ".", Type: "socket"}, true},
	}
	for _, tc := range tests {
		err := Validate([]ztoc.FileMetadata{tc.entry})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidLayer)) {
			t.Errorf("Validate(%s) = %v, want ok=%v (or ErrInvalidLayer)", tc.name, err, tc.ok)
		}
	}
	tr, err := buildTree([]ztoc.FileMetadata{{Name: "/", Type: ztoc.TypeDir, Mode: 0o700, UID: 3}}, nil)
	if err != nil {
		t.Fatalf(`buildTree("/" dir) = %v`, err)
	}
	if tr.inodes[0].mode != syscall.S_IFDIR|0o700 || tr.inodes[0].uid != 3 {
		t.Errorf(`buildTree("/" dir 0700 uid 3) root = %+v; want mode 040700 uid 3`, tr.inodes[0])
	}
}

func TestBuildTreeSemantics(t *testing.T) {
	t1 := time.Date(2020, 1, 2, 3, 4, 5, 6, time.UTC)
	t2 := time.Date(2021, 1, 2, 3, 4, 5, 7, time.UTC)
	tr, err := buildFromTar(t, []tarEntry{
		{name: "./", typ: tar.TypeDir, mode: 0o700, uid: 9},
		{name: "x/y/f", typ: tar.TypeReg, mode: 0o640},
		{name: "a", typ: tar.TypeReg, mode: 0o600, uid: 1, gid: 1, mtime: t1},
		{name: "./l", typ: tar.TypeLink, link: "/a", mode: 0o4755, uid: 2, gid: 3, mtime: t2,
			xattrs: map[string]string{"user.k": "v"}},
		{name: "s", typ: tar.TypeSymlink, link: "a", mtime: t1},
		{name: "ls", typ: tar.TypeLink, link: "s", mode: 0o600, uid: 5, mtime: t2},
		{name: "d/", typ: tar.TypeDir, mode: 0o755, mtime: t1},
		{name: "d", typ: tar.TypeReg, mode: 0o644, mtime: t2},
		{name: "e/", typ: tar.TypeDir, mode: 0o711, mtime: t1},
		{name: "e/.wh..wh..opq", typ: tar.TypeReg},
		{name: "e/", typ: tar.TypeDir, mode: 0o755, mtime: t2, xattrs: map[string]string{"user.e": "1"}},
		{name: ".wh.gone", typ: tar.TypeReg, uid: 4, gid: 4},
		{name: "gone/.wh.sub", typ: tar.TypeReg},
		{name: "..wh.odd", typ: tar.TypeReg},
		{name: ".wh..wh.plnk", typ: tar.TypeReg},
		{name: "z/", typ: tar.TypeDir, mode: 0o755},
		{name: "z/in", typ: tar.TypeReg},
		{name: "z", typ: tar.TypeSymlink, link: "x"},
		{name: "data", typ: tar.TypeReg, xattrs: map[string]string{"security.selinux": "system_u:object_r:x", "trusted.t": "\x00\x01"}},
	})
	if err != nil {
		t.Fatalf("buildTree: %v", err)
	}
	type want struct {
		mode, uid, gid, nlink uint32
		mtime                 time.Time
	}
	epoch := time.Unix(0, 0)
	for path, w := range map[string]want{
		"":         {syscall.S_IFDIR | 0o555, 0, 0, 2 + 2, epoch}, // "./" is ignored; subdirs x and e
		"x":        {syscall.S_IFDIR | 0o755, 0, 0, 3, epoch},
		"x/y":      {syscall.S_IFDIR | 0o755, 0, 0, 2, epoch},
		"x/y/f":    {syscall.S_IFREG | 0o640, 0, 0, 1, testTime},
		"a":        {syscall.S_IFREG | 0o4755, 2, 3, 2, t2}, // the link's metadata wins
		"l":        {syscall.S_IFREG | 0o4755, 2, 3, 2, t2},
		"s":        {syscall.S_IFLNK | 0o777, 5, 0, 2, t1}, // link to a symlink: only the owner changes
		"d":        {syscall.S_IFREG | 0o644, 0, 0, 1, t1}, // the dir's deferred mtime lands on the file
		"e":        {syscall.S_IFDIR | 0o755, 0, 0, 2, t2},
		"gone":     {syscall.S_IFCHR, 4, 4, 1, testTime},
		".wh.plnk": {syscall.S_IFCHR, 0, 0, 1, testTime},
		"z":        {syscall.S_IFLNK | 0o777, 0, 0, 1, testTime},
	} {
		k := treeAt(tr, path)
		if k < 0 {
			t.Errorf("%q missing", path)
			continue
		}
		in := &tr.inodes[k]
		got := want{in.mode, in.uid, in.gid, in.nlink, time.Unix(in.mtimeSec, int64(in.mtimeNsec))}
		if !got.mtime.Equal(w.mtime) || got.mode != w.mode || got.uid != w.uid || got.gid != w.gid || got.nlink != w.nlink {
			t.Errorf("%q = %+v (mode %o), want %+v (mode %o)", path, got, got.mode, w, w.mode)
		}
	}
	for _, path := range []string{".wh.gone", "gone/sub", "e/.wh..wh..opq", "..wh.odd", "z/in"} {
		if treeAt(tr, path) >= 0 && path != "..wh.odd" {
			t.Errorf("%q exists, want it absent", path)
		}
	}
	if treeAt(tr, "..wh.odd") < 0 {
		t.Errorf(`"..wh.odd" (no whiteout prefix) is missing`)
	}
	if a, l := treeAt(tr, "a"), treeAt(tr, "l"); a != l {
		t.Errorf("hard link l is inode %d, its target a is %d", l, a)
	}
	checkXattrs := func(path string, want map[string]string) {
		t.Helper()
		k := treeAt(tr, path)
		got := map[string]string{}
		for _, x := range tr.inodes[k].xattrs {
			got[x.name] = x.value
		}
		if len(got) != len(want) {
			t.Errorf("xattrs of %q = %q, want %q", path, got, want)
		}
		for n, v := range want {
			if got[n] != v {
				t.Errorf("xattr %s of %q = %q, want %q", n, path, got[n], v)
			}
		}
	}
	checkXattrs("e", map[string]string{TrustedOpaqueXattr: "y", UserOpaqueXattr: "y", "user.e": "1"})
	checkXattrs("a", map[string]string{"user.k": "v"})
	checkXattrs("data", map[string]string{"trusted.t": "\x00\x01"})
	checkXattrs("x", map[string]string{})
}

func TestEncodeDev(t *testing.T) {
	tests := []struct {
		major, minor int64
		want         uint32
	}{
		{1, 3, 0x103},
		{8, 0, 0x800},
		{300, 70000, uint32(70000&0xff | 300<<8 | (70000&^0xff)<<12)},
		{0xfff, 0xfffff, 0xffffffff},
	}
	for _, tc := range tests {
		got, err := encodeDev(tc.major, tc.minor)
		if err != nil || got != tc.want {
			t.Errorf("encodeDev(%d, %d) = %#x, %v, want %#x", tc.major, tc.minor, got, err, tc.want)
		}
	}
}

// BenchmarkBuildTree builds the tree of a layer of 100,000 files in 1,000
// directories.
func BenchmarkBuildTree(b *testing.B) {
	var entries []ztoc.FileMetadata
	for d := range 1000 {
		entries = append(entries, ztoc.FileMetadata{Name: fmt.Sprintf("./usr/share/d%04d/", d), Type: ztoc.TypeDir, Mode: 0o755})
		for f := range 100 {
			entries = append(entries, ztoc.FileMetadata{Name: fmt.Sprintf("./usr/share/d%04d/file-%03d.txt", d, f),
				Type: ztoc.TypeReg, Mode: 0o644, UncompressedSize: 1000})
		}
	}
	b.ResetTimer()
	for range b.N {
		if _, err := buildTree(entries, []string{TrustedOpaqueXattr}); err != nil {
			b.Fatal(err)
		}
	}
}
