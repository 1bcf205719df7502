package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestSnapshot builds a directory with every kind of object on the real file
// system and checks that Snapshot describes it exactly.
func TestSnapshot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown, mknod)")
	}
	root := t.TempDir()
	at := func(p string) string { return filepath.Join(root, p) }
	mtime := time.Date(2021, 2, 3, 4, 5, 6, 789, time.UTC)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(at("dir"), 0o755))
	must(os.WriteFile(at("dir/file"), []byte("hello"), 0o644))
	must(os.WriteFile(at("suid"), []byte("x"), 0o644))
	must(os.Chown(at("suid"), 12, 34))
	must(unix.Chmod(at("suid"), 0o4755))
	must(os.Link(at("dir/file"), at("hard")))
	must(os.Symlink("dir/file", at("link")))
	must(unix.Mkfifo(at("fifo"), 0o600))
	must(unix.Mknod(at("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(at("loop"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 1))))
	must(unix.Chmod(at("null"), 0o666)) // mknod applies the umask
	must(unix.Chmod(at("loop"), 0o660))
	must(os.Mkdir(at("sticky"), 0o755))
	must(os.Chmod(at("sticky"), os.ModeSticky|0o777))
	xattrs := true
	if err := unix.Lsetxattr(at("dir/file"), "user.test", []byte{0, 1, 2}, 0); errors.Is(err, unix.ENOTSUP) {
		xattrs = false // the temp file system has no user xattrs; the rest is still checked
	} else {
		must(err)
	}
	for _, p := range []string{"dir/file", "suid", "link", "fifo", "null", "loop", "sticky", "dir"} {
		ts := unix.NsecToTimespec(mtime.UnixNano())
		must(unix.UtimesNanoAt(unix.AT_FDCWD, at(p), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}

	got, err := Snapshot(root)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	ns := mtime.UnixNano()
	file := Node{Type: TypeFile, Mode: 0o644, Size: 5, MtimeNs: ns, SHA256: sum("hello"), LinkGroup: "dir/file"}
	if xattrs {
		file.Xattrs = map[string][]byte{"user.test": {0, 1, 2}}
	}
	want := Tree{
		"dir":      {Type: TypeDir, Mode: 0o755, MtimeNs: ns},
		"dir/file": file,
		"hard":     file,
		"suid":     {Type: TypeFile, Mode: 0o4755, UID: 12, GID: 34, Size: 1, MtimeNs: ns, SHA256: sum("x")},
		"link":     {Type: TypeSymlink, Mode: 0o777, MtimeNs: ns, Target: "dir/file"},
		"fifo":     {Type: TypeFIFO, Mode: 0o600, MtimeNs: ns},
		"null":     {Type: TypeChar, Mode: 0o666, MtimeNs: ns, DevMajor: 1, DevMinor: 3},
		"loop":     {Type: TypeBlock, Mode: 0o660, MtimeNs: ns, DevMajor: 7, DevMinor: 1},
		"sticky":   {Type: TypeDir, Mode: 0o1777, MtimeNs: ns},
	}
	// "hard" shares the inode of dir/file; its mtime is the file's.
	if d := Diff(want, got); len(d) > 0 {
		t.Errorf("Snapshot differs from the expected tree:\n%s", strings.Join(d, "\n"))
	}

	if _, err := Snapshot(at("dir/file")); !errors.Is(err, ErrNotDir) {
		t.Errorf("Snapshot(a file) error = %v, want ErrNotDir", err)
	}
}

func TestDiff(t *testing.T) {
	base := Tree{
		"a":   {Type: TypeDir, Mode: 0o755, MtimeNs: 1},
		"a/f": {Type: TypeFile, Mode: 0o644, Size: 3, SHA256: "abc", MtimeNs: 2, Xattrs: map[string][]byte{"user.x": []byte("1")}},
		"l":   {Type: TypeSymlink, Mode: 0o777, Target: "a/f", MtimeNs: 3},
	}
	change := func(f func(Tree)) Tree {
		c := base.Clone()
		f(c)
		return c
	}
	tests := []struct {
		name string
		got  Tree
		opts []DiffOption
		want []string
	}{
		{"equal", base.Clone(), nil, nil},
		{"missing", change(func(t Tree) { delete(t, "l") }), nil, []string{`l: missing (want symlink 0777 0:0 -> "a/f")`}},
		{"unexpected", change(func(t Tree) { t["z"] = Node{Type: TypeFIFO, Mode: 0o600} }), nil, []string{"z: unexpected (got fifo 0600 0:0)"}},
		{"mode and owner", change(func(t Tree) { n := t["a/f"]; n.Mode, n.UID = 0o4755, 7; t["a/f"] = n }), nil,
			[]string{"a/f: mode got 4755, want 0644", "a/f: owner got 7:0, want 0:0"}},
		{"type", change(func(t Tree) { t["l"] = Node{Type: TypeFile} }), nil, []string{"l: type got file, want symlink"}},
		{"xattr", change(func(t Tree) {
			n := t["a/f"]
			n.Xattrs = map[string][]byte{"user.x": []byte("2"), "trusted.overlay.opaque": []byte("y")}
			t["a/f"] = n
		}), nil,
			[]string{`a/f: xattr trusted.overlay.opaque unexpected (got "y")`, `a/f: xattr user.x got "2", want "1"`}},
		{"xattr ignored", change(func(t Tree) { n := t["a/f"]; n.Xattrs["trusted.overlay.opaque"] = []byte("y"); t["a/f"] = n }),
			[]DiffOption{IgnoreXattrs("trusted.overlay.")}, nil},
		{"dir mtime ignored", change(func(t Tree) { n := t["a"]; n.MtimeNs = 9; t["a"] = n }), []DiffOption{IgnoreMtimes(TypeDir)}, nil},
		{"file mtime", change(func(t Tree) { n := t["a/f"]; n.MtimeNs = 9; t["a/f"] = n }), []DiffOption{IgnoreMtimes(TypeDir)},
			[]string{"a/f: mtime got 1970-01-01T00:00:00.000000009Z, want 1970-01-01T00:00:00.000000002Z"}},
		{"path ignored", change(func(t Tree) { delete(t, "a/f"); delete(t, "a") }), []DiffOption{IgnorePaths("/a")}, nil},
		{"content", change(func(t Tree) { n := t["a/f"]; n.SHA256 = "def"; t["a/f"] = n }), nil, []string{"a/f: sha256 got def, want abc"}},
		{"link group", change(func(t Tree) { n := t["a/f"]; n.LinkGroup = "a/f"; t["a/f"] = n }), nil, []string{`a/f: hard-link group got "a/f", want ""`}},
		{"link group ignored", change(func(t Tree) { n := t["a/f"]; n.LinkGroup = "a/f"; t["a/f"] = n }), []DiffOption{IgnoreLinkGroups()}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Diff(base, tc.got, tc.opts...)
			if !slices.Equal(got, tc.want) {
				t.Errorf("Diff() =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}

func TestAssignLinkGroups(t *testing.T) {
	tr := Tree{"b": {Type: TypeFile}, "a": {Type: TypeFile}, "c": {Type: TypeFile, LinkGroup: "stale"}, "d": {Type: TypeFile}}
	AssignLinkGroups(tr, map[string]string{"a": "1", "b": "1", "c": "2", "gone": "2"})
	want := map[string]string{"a": "a", "b": "a", "c": "", "d": ""}
	for p, w := range want {
		if got := tr[p].LinkGroup; got != w {
			t.Errorf("LinkGroup of %q = %q, want %q", p, got, w)
		}
	}
}

func TestWriteReadFile(t *testing.T) {
	tr := Tree{"f": {Type: TypeFile, Mode: 0o600, Size: 1, SHA256: "x", Xattrs: map[string][]byte{"user.b": {0, 255}}}}
	name := filepath.Join(t.TempDir(), "tree.json")
	if err := tr.WriteFile(name); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	got, err := ReadFile(name)
	if err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	if d := Diff(tr, got); d != nil {
		t.Errorf("round trip differs: %v", d)
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("ReadFile(missing) succeeded, want an error")
	}
}
