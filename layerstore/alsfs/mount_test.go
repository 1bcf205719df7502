package alsfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	capValue  = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" // cap_net_raw+ep
	longName  = strings.Repeat("long-name-", 20)                                                   // 200 bytes
	deepPath  = "deep/" + strings.Repeat("d/", 60) + "leaf"                                        // 127 bytes
	bigData   = randomBytes(3<<20 + 17)
	laterTime = time.Date(2022, 2, 3, 4, 5, 6, 999999999, time.UTC)
	epochTime = time.Unix(0, 0)
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(1)).Read(b)
	return b
}

// mainEntries is a layer with every kind of entry containers/storage
// handles.
var mainEntries = []tarEntry{
	{name: "./", typ: tar.TypeDir, mode: 0o700, uid: 9}, // ignored: the diff root stays 0555 root:root
	{name: "./bin/", typ: tar.TypeDir, mode: 0o755},
	{name: "./bin/sh", typ: tar.TypeReg, mode: 0o755, data: []byte("#!/bin/sh\n")},
	{name: "bin/suid", typ: tar.TypeReg, mode: 0o4755, data: []byte("s")},
	{name: "bin/sgid", typ: tar.TypeReg, mode: 0o2711, gid: 42, data: []byte("g")},
	{name: "bin/ping", typ: tar.TypeReg, mode: 0o755, data: []byte("ping"),
		xattrs: map[string]string{"security.capability": capValue}},
	{name: "tmp/", typ: tar.TypeDir, mode: 0o1777, mtime: laterTime},
	{name: "etc/passwd", typ: tar.TypeReg, mode: 0o644, uid: 1000, gid: 1000, data: []byte("root:x:0:0\n")},
	{name: "/abs/file", typ: tar.TypeReg, mode: 0o600, uid: 100000, gid: 100001, data: []byte("abs")},
	{name: "trail/", typ: tar.TypeDir, mode: 0o700, uid: 3, gid: 4},
	{name: "usr/lib/a", typ: tar.TypeReg, mode: 0o644, data: []byte("hardlinked")},
	{name: "usr/lib/b", typ: tar.TypeLink, link: "usr/lib/a", mode: 0o644},
	{name: "usr/lib/c", typ: tar.TypeLink, link: "./usr/lib/a", mode: 0o644},
	{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
	{name: "abslink", typ: tar.TypeSymlink, link: "/etc/passwd", uid: 7, gid: 8},
	{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
	{name: "dev/sda", typ: tar.TypeBlock, mode: 0o660, gid: 6, major: 8},
	{name: "dev/big", typ: tar.TypeChar, mode: 0o600, major: 300, minor: 70000},
	{name: "run/fifo", typ: tar.TypeFifo, mode: 0o600},
	{name: "data/x", typ: tar.TypeReg, mode: 0o644, data: []byte("x"), xattrs: map[string]string{
		"user.foo": "bar", "user.empty": "", "trusted.t": "v", "security.selinux": "ignored"}},
	{name: ".wh.gone", typ: tar.TypeReg},
	{name: "etc/.wh.shadow", typ: tar.TypeReg, uid: 5, gid: 6},
	{name: "opq/", typ: tar.TypeDir, mode: 0o755},
	{name: "opq/.wh..wh..opq", typ: tar.TypeReg},
	{name: "opq/kept", typ: tar.TypeReg, mode: 0o644, data: []byte("kept")},
	{name: longName, typ: tar.TypeReg, mode: 0o644, data: []byte("long")},
	{name: deepPath, typ: tar.TypeReg, mode: 0o644, data: []byte("deep")},
	{name: "dup", typ: tar.TypeReg, mode: 0o644, data: []byte("first")},
	{name: "dup", typ: tar.TypeReg, mode: 0o640, data: []byte("second")},
	{name: "dupdir/", typ: tar.TypeDir, mode: 0o700, uid: 1},
	{name: "dupdir/child", typ: tar.TypeReg, mode: 0o644},
	{name: "dupdir/", typ: tar.TypeDir, mode: 0o750, uid: 2, mtime: laterTime},
	{name: "replaced/", typ: tar.TypeDir, mode: 0o755},
	{name: "replaced/child", typ: tar.TypeReg},
	{name: "replaced", typ: tar.TypeReg, mode: 0o644, data: []byte("now a file")},
	{name: ".wh.rmdir", typ: tar.TypeReg},
	{name: "rmdir/.wh.x", typ: tar.TypeReg}, // the host skips it (ENOTDIR)
	{name: "big", typ: tar.TypeReg, mode: 0o644, data: bigData},
	{name: "empty", typ: tar.TypeReg, mode: 0o644},
	{name: "implicit/deeper/file", typ: tar.TypeReg, mode: 0o644, data: []byte("i")},
}

type wantAttr struct {
	mode       uint32 // type and permission bits
	uid, gid   uint32
	nlink      uint64
	size       int64
	mtime      time.Time
	rdev       [2]uint32 // major, minor
	link       string    // symlink target
	data       []byte    // regular file content
	checkData  bool
	sameInodes []string // other names of the same inode
}

func TestMountAttributes(t *testing.T) {
	d := layerDigest("main")
	r := newTestResolver()
	r.add(testRef, d, newTestLayer(t, mainEntries))
	_, mnt := mountTest(t, r, Options{OpaqueXattrs: []string{TrustedOpaqueXattr, UserOpaqueXattr}})
	diff := filepath.Join(mnt, encodeRef(testRef), d.String(), "diff")

	reg := func(mode uint32, data string) wantAttr {
		return wantAttr{mode: syscall.S_IFREG | mode, nlink: 1, size: int64(len(data)), mtime: testTime,
			data: []byte(data), checkData: true}
	}
	dir := func(mode uint32, nlink uint64, mtime time.Time) wantAttr {
		return wantAttr{mode: syscall.S_IFDIR | mode, nlink: nlink, size: 4096, mtime: mtime}
	}
	withOwner := func(w wantAttr, uid, gid uint32) wantAttr { w.uid, w.gid = uid, gid; return w }
	hl := reg(0o644, "hardlinked")
	hl.nlink = 3
	hl.sameInodes = []string{"usr/lib/a", "usr/lib/b", "usr/lib/c"}
	dup := reg(0o640, "second")
	bigW := reg(0o644, "")
	bigW.size, bigW.data = int64(len(bigData)), bigData

	tests := map[string]wantAttr{
		// root: bin tmp etc abs trail usr dev run data opq deep dupdir implicit
		"":                dir(0o555, 2+13, epochTime),
		"bin":             dir(0o755, 2, testTime),
		"bin/sh":          reg(0o755, "#!/bin/sh\n"),
		"bin/suid":        reg(0o4755, "s"),
		"bin/sgid":        withOwner(reg(0o2711, "g"), 0, 42),
		"bin/ping":        reg(0o755, "ping"),
		"tmp":             dir(0o1777, 2, laterTime),
		"etc":             dir(0o755, 2, epochTime),
		"etc/passwd":      withOwner(reg(0o644, "root:x:0:0\n"), 1000, 1000),
		"etc/shadow":      {mode: syscall.S_IFCHR, uid: 5, gid: 6, nlink: 1, mtime: testTime},
		"abs/file":        withOwner(reg(0o600, "abs"), 100000, 100001),
		"trail":           withOwner(dir(0o700, 2, testTime), 3, 4),
		"usr":             dir(0o755, 3, epochTime),
		"usr/lib/a":       hl,
		"usr/lib/b":       hl,
		"usr/lib/c":       hl,
		"lib":             {mode: syscall.S_IFLNK | 0o777, nlink: 1, size: 7, mtime: testTime, link: "usr/lib"},
		"abslink":         {mode: syscall.S_IFLNK | 0o777, uid: 7, gid: 8, nlink: 1, size: 11, mtime: testTime, link: "/etc/passwd"},
		"dev/null":        {mode: syscall.S_IFCHR | 0o666, nlink: 1, mtime: testTime, rdev: [2]uint32{1, 3}},
		"dev/sda":         {mode: syscall.S_IFBLK | 0o660, gid: 6, nlink: 1, mtime: testTime, rdev: [2]uint32{8, 0}},
		"dev/big":         {mode: syscall.S_IFCHR | 0o600, nlink: 1, mtime: testTime, rdev: [2]uint32{300, 70000}},
		"run/fifo":        {mode: syscall.S_IFIFO | 0o600, nlink: 1, mtime: testTime},
		"gone":            {mode: syscall.S_IFCHR, nlink: 1, mtime: testTime},
		"rmdir":           {mode: syscall.S_IFCHR, nlink: 1, mtime: testTime},
		"opq":             dir(0o755, 2, testTime),
		"opq/kept":        reg(0o644, "kept"),
		longName:          reg(0o644, "long"),
		deepPath:          reg(0o644, "deep"),
		"dup":             dup,
		"dupdir":          withOwner(dir(0o750, 2, laterTime), 2, 0),
		"dupdir/child":    reg(0o644, ""),
		"replaced":        reg(0o644, "now a file"),
		"big":             bigW,
		"empty":           reg(0o644, ""),
		"implicit":        dir(0o755, 3, epochTime),
		"implicit/deeper": dir(0o755, 2, epochTime),
	}
	for path, w := range tests {
		p := filepath.Join(diff, path)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("Lstat(%s): %v", path, err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		got := wantAttr{
			mode: st.Mode, uid: st.Uid, gid: st.Gid, nlink: st.Nlink, size: st.Size,
			mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec), rdev: [2]uint32{unix.Major(st.Rdev), unix.Minor(st.Rdev)},
		}
		if got.mode != w.mode || got.uid != w.uid || got.gid != w.gid || got.nlink != w.nlink ||
			got.size != w.size || !got.mtime.Equal(w.mtime) || got.rdev != w.rdev {
			t.Errorf("%s: mode %o uid %d gid %d nlink %d size %d mtime %v rdev %v,\n  want mode %o uid %d gid %d nlink %d size %d mtime %v rdev %v",
				path, got.mode, got.uid, got.gid, got.nlink, got.size, got.mtime, got.rdev,
				w.mode, w.uid, w.gid, w.nlink, w.size, w.mtime, w.rdev)
		}
		if wantBlocks := (st.Size + 511) / 512; w.mode&syscall.S_IFMT == syscall.S_IFREG && st.Blocks != wantBlocks {
			t.Errorf("%s: st_blocks %d, want %d", path, st.Blocks, wantBlocks)
		}
		if st.Ctim != st.Mtim || st.Atim != st.Mtim {
			t.Errorf("%s: atime %v ctime %v, want both equal to mtime %v", path, st.Atim, st.Ctim, st.Mtim)
		}
		if w.link != "" {
			if target, err := os.Readlink(p); err != nil || target != w.link {
				t.Errorf("Readlink(%s) = %q, %v, want %q", path, target, err, w.link)
			}
		}
		if w.checkData {
			if data, err := os.ReadFile(p); err != nil || !bytes.Equal(data, w.data) {
				t.Errorf("ReadFile(%s) = %d bytes, %v; want %d bytes equal to the tar's", path, len(data), err, len(w.data))
			}
		}
		for _, other := range w.sameInodes {
			var ost syscall.Stat_t
			if err := syscall.Lstat(filepath.Join(diff, other), &ost); err != nil || ost.Ino != st.Ino {
				t.Errorf("%s: inode %d, %s: inode %d (%v); want the same", path, st.Ino, other, ost.Ino, err)
			}
		}
	}

	for _, path := range []string{".wh.gone", "etc/.wh.shadow", "opq/.wh..wh..opq", "replaced/child", "rmdir/x",
		".wh.rmdir", "dupdir/.wh.x"} {
		if _, err := os.Lstat(filepath.Join(diff, path)); !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) {
			t.Errorf("Lstat(%s) = %v, want ENOENT or ENOTDIR", path, err)
		}
	}

	// Inode numbers are unique within the layer.
	seen := map[uint64]string{}
	filepath.Walk(diff, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		ino := fi.Sys().(*syscall.Stat_t).Ino
		if prev, ok := seen[ino]; ok && !strings.HasPrefix(prev, filepath.Join(diff, "usr/lib")) {
			t.Errorf("%s and %s share inode %d", prev, p, ino)
		}
		seen[ino] = p
		return nil
	})

	t.Run("xattrs", func(t *testing.T) {
		xattrTests := []struct {
			path, name string
			want       string
			errno      syscall.Errno
		}{
			{"bin/ping", "security.capability", capValue, 0},
			{"data/x", "user.foo", "bar", 0},
			{"data/x", "user.empty", "", 0},
			{"data/x", "trusted.t", "v", 0},
			{"data/x", "security.selinux", "", syscall.ENODATA},
			{"data/x", "user.missing", "", syscall.ENODATA},
			{"opq", TrustedOpaqueXattr, "y", 0},
			{"opq", UserOpaqueXattr, "y", 0},
			{"bin", TrustedOpaqueXattr, "", syscall.ENODATA},
			{"", TrustedOpaqueXattr, "", syscall.ENODATA},
		}
		for _, tc := range xattrTests {
			buf := make([]byte, 256)
			n, err := unix.Lgetxattr(filepath.Join(diff, tc.path), tc.name, buf)
			if tc.errno != 0 {
				if !errors.Is(err, tc.errno) {
					t.Errorf("Lgetxattr(%s, %s) = %v, want %v", tc.path, tc.name, err, tc.errno)
				}
				continue
			}
			if err != nil || string(buf[:n]) != tc.want {
				t.Errorf("Lgetxattr(%s, %s) = %q, %v, want %q", tc.path, tc.name, buf[:max(n, 0)], err, tc.want)
			}
		}
		if _, err := unix.Lgetxattr(filepath.Join(diff, "data/x"), "user.foo", make([]byte, 2)); !errors.Is(err, syscall.ERANGE) {
			t.Errorf("Lgetxattr with a 2-byte buffer = %v, want ERANGE", err)
		}
		if n, err := unix.Lgetxattr(filepath.Join(diff, "bin/ping"), "security.capability", nil); err != nil || n != len(capValue) {
			t.Errorf("Lgetxattr(size 0) = %d, %v, want %d", n, err, len(capValue))
		}
		buf := make([]byte, 256)
		n, err := unix.Llistxattr(filepath.Join(diff, "data/x"), buf)
		names := strings.Split(strings.TrimSuffix(string(buf[:max(n, 0)]), "\x00"), "\x00")
		if want := []string{"trusted.t", "user.empty", "user.foo"}; err != nil || !slices.Equal(names, want) {
			t.Errorf("Llistxattr(data/x) = %q, %v, want %q", names, err, want)
		}
		if _, err := unix.Llistxattr(filepath.Join(diff, "data/x"), make([]byte, 4)); !errors.Is(err, syscall.ERANGE) {
			t.Errorf("Llistxattr with a 4-byte buffer = %v, want ERANGE", err)
		}
	})

	t.Run("read only", func(t *testing.T) {
		file := filepath.Join(diff, "etc/passwd")
		tests := []struct {
			op  string
			err error
		}{
			{"open for writing", func() error { f, err := os.OpenFile(file, os.O_WRONLY, 0); f.Close(); return err }()},
			{"create", func() error { f, err := os.Create(filepath.Join(diff, "new")); f.Close(); return err }()},
			{"truncate", os.Truncate(file, 0)},
			{"chmod", os.Chmod(file, 0o777)},
			{"chown", os.Lchown(file, 1, 1)},
			{"utimes", os.Chtimes(file, time.Now(), time.Now())},
			{"mkdir", os.Mkdir(filepath.Join(diff, "newdir"), 0o755)},
			{"unlink", os.Remove(file)},
			{"rmdir", syscall.Rmdir(filepath.Join(diff, "bin"))},
			{"rename", os.Rename(file, filepath.Join(diff, "etc/passwd2"))},
			{"link", os.Link(file, filepath.Join(diff, "etc/passwd2"))},
			{"symlink", os.Symlink("x", filepath.Join(diff, "etc/sym"))},
			{"mknod", syscall.Mknod(filepath.Join(diff, "fifo2"), syscall.S_IFIFO|0o644, 0)},
			{"setxattr", unix.Lsetxattr(file, "user.x", []byte("y"), 0)},
			{"removexattr", unix.Lremovexattr(filepath.Join(diff, "data/x"), "user.foo")},
		}
		for _, tc := range tests {
			if !errors.Is(tc.err, syscall.EROFS) {
				t.Errorf("%s = %v, want EROFS", tc.op, tc.err)
			}
		}
		if err := unix.Access(file, unix.R_OK); err != nil {
			t.Errorf("access(R_OK) = %v, want success", err)
		}
		var sfs unix.Statfs_t
		if err := unix.Statfs(diff, &sfs); err != nil || sfs.Namelen != 255 || sfs.Bsize != 4096 {
			t.Errorf("statfs = %+v, %v, want namelen 255 and bsize 4096", sfs, err)
		}
	})

	t.Run("readdir", func(t *testing.T) {
		ents, err := os.ReadDir(filepath.Join(diff, "dev"))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name()+":"+e.Type().String())
		}
		if want := []string{"big:Dc---------", "null:Dc---------", "sda:D---------"}; err != nil || !slices.Equal(names, want) {
			t.Errorf("ReadDir(dev) = %q, %v, want %q", names, err, want)
		}
	})
}

// TestMountLayerDirectory reads info and blob the way the host does.
func TestMountLayerDirectory(t *testing.T) {
	d := layerDigest("main")
	layer := simpleLayer(t)
	r := newTestResolver()
	r.add(testRef, d, layer)
	_, mnt := mountTest(t, r, Options{})
	dir := filepath.Join(mnt, encodeRef(testRef), d.String())

	if info, err := os.ReadFile(filepath.Join(dir, "info")); err != nil || !bytes.Equal(info, layer.info) {
		t.Errorf("info = %q, %v, want %q", info, err, layer.info)
	}
	f, err := os.Open(filepath.Join(dir, "blob"))
	if err != nil {
		t.Fatalf("open blob: %v", err)
	}
	defer f.Close()
	blob, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(blob, layer.blob) {
		t.Errorf("blob = %d bytes, %v, want the %d bytes of the layer", len(blob), err, len(layer.blob))
	}
	ents, err := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"blob", "diff", "info"}; err != nil || !slices.Equal(names, want) {
		t.Errorf("ReadDir(layer) = %q, %v, want %q", names, err, want)
	}
	ents, err = os.ReadDir(mnt)
	if err != nil || len(ents) != 1 || ents[0].Name() != encodeRef(testRef) {
		t.Errorf("ReadDir(mnt) = %v, %v, want just %s", ents, err, encodeRef(testRef))
	}
}

// TestMountOptions checks how the filesystem is mounted.
func TestMountOptions(t *testing.T) {
	_, mnt := mountTest(t, newTestResolver(), Options{})
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(info), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == mnt {
			line = l
		}
	}
	for _, want := range []string{" - fuse.lazypull lazypull ", "nosuid", "nodev", "default_permissions", "allow_other", "max_read=1048576"} {
		if !strings.Contains(line, want) {
			t.Errorf("mountinfo %q lacks %q", line, want)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil || st.Ino != rootIno || st.Mode != syscall.S_IFDIR|0o500 || int(st.Uid) != os.Geteuid() {
		t.Errorf("stat root = ino %d mode %o uid %d, %v; want ino 1 mode 040500 uid %d", st.Ino, st.Mode, st.Uid, err, os.Geteuid())
	}
	ra, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil || strings.TrimSpace(string(ra)) != "1024" {
		t.Errorf("read_ahead_kb = %q, %v, want 1024", ra, err)
	}
}

// TestPermissions reads files as an unprivileged user: modes are enforced
// unless the mount skips permission checks.
func TestPermissions(t *testing.T) {
	canMount(t)
	d := layerDigest("perm")
	r := newTestResolver()
	r.add(testRef, d, newTestLayer(t, []tarEntry{
		{name: "secret", typ: tar.TypeReg, mode: 0o600, data: []byte("s")},
		{name: "public", typ: tar.TypeReg, mode: 0o644, data: []byte("p")},
	}))
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprintf("SkipPermissionChecks=%v", skip), func(t *testing.T) {
			_, mnt := mountTest(t, r, Options{SkipPermissionChecks: skip})
			// Let the user reach the mount point.
			for dir := filepath.Dir(mnt); dir != os.TempDir(); dir = filepath.Dir(dir) {
				if err := os.Chmod(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			layerDir := filepath.Join(mnt, encodeRef(testRef), d.String())
			diffDir, err := os.Open(filepath.Join(layerDir, "diff"))
			if err != nil {
				t.Fatal(err)
			}
			defer diffDir.Close()
			// The user gets the diff directory as fd 3 (overlay, too,
			// holds it open): the layer's own modes apply below it.
			diff := "/proc/self/fd/3"
			asUser := func(args ...string) error {
				cmd := exec.Command(args[0], args[1:]...)
				cmd.ExtraFiles = []*os.File{diffDir}
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
				return cmd.Run()
			}
			if err := asUser("/bin/cat", filepath.Join(diff, "public")); err != nil {
				t.Errorf("user reads a 0644 file: %v", err)
			}
			err = asUser("/bin/cat", filepath.Join(diff, "secret"))
			if skip != (err == nil) {
				t.Errorf("user reads a 0600 root file: %v, want success only without permission checks", err)
			}
			// access(2) is answered by the kernel, or by Access without
			// default_permissions.
			if err := asUser("/usr/bin/test", "-r", filepath.Join(diff, "secret")); err == nil {
				t.Errorf("test -r of a 0600 root file succeeded for the user")
			}
			// What the store makes up is the daemon's user's alone: the
			// user may neither list the image names nor reach a layer by
			// its path.
			for _, args := range [][]string{
				{"/bin/ls", mnt},
				{"/bin/ls", filepath.Join(mnt, encodeRef(testRef))},
				{"/bin/cat", filepath.Join(layerDir, "info")},
				{"/bin/cat", filepath.Join(layerDir, "diff", "public")},
			} {
				if err := asUser(args...); skip == (err != nil) {
					t.Errorf("user runs %q: %v, want failure unless without permission checks", args, err)
				}
			}
		})
	}
}
