package imagegen

import (
	"encoding/binary"
	"strings"
	"time"

	"github.com/lazypull/lazypull/tests/testenv/fstree"
)

// capNetBindService is a version 2 security.capability value granting
// cap_net_bind_service (permitted and effective), as `setcap
// cap_net_bind_service+ep` writes it.
var capNetBindService = func() []byte {
	v := make([]byte, 20)
	binary.LittleEndian.PutUint32(v[0:], 0x02000000|0x1) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	binary.LittleEndian.PutUint32(v[4:], 1<<10)          // permitted, low word: CAP_NET_BIND_SERVICE
	return v
}()

// longComponent is a file name of n bytes (n <= 255).
func longComponent(prefix string, n int) string {
	s := prefix + "-" + strings.Repeat("abcdefghij", 26)
	return s[:n]
}

// addZoo adds one entry of every kind under z.
func (b *layerBuilder) addZoo(z string) {
	day := time.Duration(24) * time.Hour
	text := func(size int64) content { return content{kind: kindText, seed: b.newSeed(), size: size} }

	b.dirNode(z)
	// Sizes: empty, exactly one and eight tar blocks.
	b.file(z+"/empty", 0o644, content{kind: kindLiteral})
	b.file(z+"/block512", 0o644, text(512))
	b.file(z+"/block4096", 0o644, content{kind: kindRandom, seed: b.newSeed(), size: 4096})

	// Modes and owners.
	b.file(z+"/setuid", 0o4755, content{kind: kindELF, seed: b.newSeed(), size: 3000})
	e := b.file(z+"/setgid", 0o2755, content{kind: kindELF, seed: b.newSeed(), size: 2500})
	e.node.GID, e.uname, e.gname = 42, "root", "shadow"
	e = b.file(z+"/nobody", 0o640, text(100))
	e.node.UID, e.node.GID, e.uname, e.gname = 65534, 65534, "nobody", "nogroup"
	e = b.file(z+"/bigid", 0o644, text(77))
	e.node.UID, e.node.GID = 100000, 200000 // no names
	b.file(z+"/noperm", 0o000, text(10))
	b.add(&entry{path: z + "/sticky", node: fstree.Node{Type: fstree.TypeDir, Mode: 0o1777}})
	b.add(&entry{path: z + "/setgid-dir", node: fstree.Node{Type: fstree.TypeDir, Mode: 0o2775, GID: 50}, uname: "root", gname: "staff"})
	b.add(&entry{path: z + "/private", node: fstree.Node{Type: fstree.TypeDir, Mode: 0o700, UID: 1000, GID: 1000},
		uname: "user", gname: "users"})
	e = b.file(z+"/private/secret", 0o600, text(333))
	e.node.UID, e.node.GID, e.uname, e.gname = 1000, 1000, "user", "users"

	// Extended attributes (PAX SCHILY.xattr.*).
	e = b.file(z+"/xattrs", 0o644, text(200))
	e.node.Xattrs = map[string][]byte{
		"user.foo":  []byte("bar"),
		"user.bin":  {0x00, 0x01, 0xff, 0xfe, 0x00, 'x'},
		"user.long": []byte(strings.Repeat("0123456789abcdef", 128)),
	}
	e = b.file(z+"/caps", 0o755, content{kind: kindELF, seed: b.newSeed(), size: 1800})
	e.node.Xattrs = map[string][]byte{"security.capability": capNetBindService}
	b.add(&entry{path: z + "/xattr-dir", node: fstree.Node{Type: fstree.TypeDir, Mode: 0o755,
		Xattrs: map[string][]byte{"user.dirattr": []byte("on a directory")}}})
	b.file(z+"/xattr-dir/inside", 0o644, text(64))

	// Modification times: sub-second (PAX), old, far future.
	e = b.file(z+"/subsecond", 0o644, text(50))
	e.node.MtimeNs, e.pax = time.Date(2023, 5, 6, 7, 8, 9, 123456789, time.UTC).UnixNano(), true
	b.add(&entry{path: z + "/subsecond-dir", node: fstree.Node{Type: fstree.TypeDir, Mode: 0o755,
		MtimeNs: time.Date(2022, 1, 2, 3, 4, 5, 500000000, time.UTC).UnixNano()}, pax: true})
	e = b.file(z+"/old", 0o644, text(30))
	e.node.MtimeNs = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	e = b.file(z+"/future", 0o644, text(30))
	e.node.MtimeNs = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

	// Symlinks: relative, upwards, absolute, dangling, to a directory, with a
	// target longer than 100 bytes (PAX linkpath).
	b.symlink(z+"/rel-link", "empty")
	b.symlink(z+"/rel-up", "../zoo/setuid")
	b.symlink(z+"/abs-link", "/bin/busybox")
	b.symlink(z+"/dangling", "does/not/exist")
	b.symlink(z+"/dir-link", "sticky")
	b.symlink(z+"/long-target", strings.Repeat("../", 10)+longComponent("target", 180))
	e = b.symlink(z+"/old-link", "empty")
	e.node.MtimeNs = b.mtime - int64(300*day)

	// Long names: a 200-byte component, a path above 255 bytes, a hard link
	// whose target name is above 100 bytes.
	long := z + "/" + longComponent("longname", 200)
	b.file(long, 0o644, text(1000))
	deep := z + "/deep"
	for i := range 5 {
		deep += "/" + longComponent(string(rune('a'+i))+"-level", 60)
	}
	b.file(deep+"/file-at-the-end-of-a-long-path.txt", 0o644, text(400))

	// Hard links: three names of one file (one in another directory), a link
	// to the setuid file, a link with a long target name.
	b.file(z+"/hard-a", 0o644, content{kind: kindSource, seed: b.newSeed(), size: 5000})
	b.hardlink(z+"/hard-b", z+"/hard-a")
	b.hardlink(z+"/sticky/hard-c", z+"/hard-a")
	b.hardlink(z+"/setuid-link", z+"/setuid")
	b.hardlink(z+"/zz-link-to-long", long)

	// Devices and FIFOs.
	dev := func(p string, typ fstree.Type, mode uint32, major, minor uint32, gid int, gname string) {
		b.add(&entry{path: p, uname: "root", gname: gname,
			node: fstree.Node{Type: typ, Mode: mode, GID: gid, DevMajor: major, DevMinor: minor}})
	}
	dev(z+"/dev/null", fstree.TypeChar, 0o666, 1, 3, 0, "root")
	dev(z+"/dev/tty", fstree.TypeChar, 0o666, 5, 0, 5, "tty")
	dev(z+"/dev/bigminor", fstree.TypeChar, 0o600, 240, 1048575, 0, "root")
	dev(z+"/dev/loop0", fstree.TypeBlock, 0o660, 7, 0, 6, "disk")
	dev(z+"/dev/sda", fstree.TypeBlock, 0o660, 8, 0, 6, "disk")
	dev(z+"/fifo", fstree.TypeFIFO, 0o644, 0, 0, 0, "root")
	dev(z+"/dev/initctl", fstree.TypeFIFO, 0o600, 0, 0, 0, "root")

	// Names with spaces, non-ASCII and a leading dash.
	b.file(z+"/with space.txt", 0o644, text(20))
	b.file(z+"/ünïcödé-名前.txt", 0o644, text(20))
	b.file(z+"/-leading-dash", 0o644, text(20))
}
