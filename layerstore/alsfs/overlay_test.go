package alsfs

import (
	"archive/tar"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOverlay mounts overlayfs over two diff directories of the store, a
// base layer and a layer deleting files, and checks the merged view: this
// proves the whiteouts and opaque directories are what overlayfs expects.
func TestOverlay(t *testing.T) {
	canMount(t)
	base, upper := layerDigest("base"), layerDigest("upper")
	r := newTestResolver()
	r.add(testRef, base, newTestLayer(t, []tarEntry{
		{name: "a", typ: tar.TypeReg, mode: 0o644, data: []byte("a")},
		{name: "b", typ: tar.TypeReg, mode: 0o644, data: []byte("b")},
		{name: "d/x", typ: tar.TypeReg, mode: 0o644, data: []byte("x")},
		{name: "d/y", typ: tar.TypeReg, mode: 0o644, data: []byte("y")},
		{name: "o/p", typ: tar.TypeReg, mode: 0o644, data: []byte("p")},
		{name: "o/q/deep", typ: tar.TypeReg, mode: 0o644, data: []byte("deep")},
		{name: "gone/sub", typ: tar.TypeReg, mode: 0o644},
	}))
	r.add(testRef, upper, newTestLayer(t, []tarEntry{
		{name: ".wh.a", typ: tar.TypeReg},
		{name: "d/.wh.x", typ: tar.TypeReg},
		{name: "o/", typ: tar.TypeDir, mode: 0o755},
		{name: "o/.wh..wh..opq", typ: tar.TypeReg},
		{name: "o/new", typ: tar.TypeReg, mode: 0o644, data: []byte("new")},
		{name: ".wh.gone", typ: tar.TypeReg},
		{name: "gone/.wh.sub", typ: tar.TypeReg},
		{name: "b", typ: tar.TypeReg, mode: 0o600, data: []byte("b2")},
	}))
	// The opaque xattr root's overlayfs reads.
	_, mnt := mountTest(t, r, Options{OpaqueXattrs: []string{TrustedOpaqueXattr}})
	diff := func(d string) string { return filepath.Join(mnt, encodeRef(testRef), d, "diff") }

	// Like containers/storage, name the lower layers by symlinks: the ':'
	// of the digests would split lowerdir.
	links := t.TempDir()
	for name, d := range map[string]string{"U": upper.String(), "B": base.String()} {
		if err := os.Symlink(diff(d), filepath.Join(links, name)); err != nil {
			t.Fatal(err)
		}
	}
	merged := t.TempDir()
	opts := "lowerdir=" + filepath.Join(links, "U") + ":" + filepath.Join(links, "B")
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, opts); err != nil {
		if errors.Is(err, syscall.ENODEV) {
			t.Skipf("no overlayfs: %v", err)
		}
		t.Fatalf("mount overlay %s: %v", opts, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount overlay: %v", err)
		}
	})

	list := func(dir string) []string {
		ents, err := os.ReadDir(filepath.Join(merged, dir))
		if err != nil {
			t.Fatalf("ReadDir(%s): %v", dir, err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	for dir, want := range map[string][]string{
		"":  {"b", "d", "o"},
		"d": {"y"},
		"o": {"new"},
	} {
		if got := list(dir); !slices.Equal(got, want) {
			t.Errorf("merged %q lists %q, want %q", dir, got, want)
		}
	}
	for _, p := range []string{"a", "d/x", "o/p", "o/q", "o/q/deep", "gone"} {
		if _, err := os.Lstat(filepath.Join(merged, p)); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("merged %s: Lstat = %v, want ENOENT", p, err)
		}
	}
	for p, want := range map[string]string{"b": "b2", "d/y": "y", "o/new": "new"} {
		if data, err := os.ReadFile(filepath.Join(merged, p)); err != nil || string(data) != want {
			t.Errorf("merged %s = %q, %v, want %q", p, data, err, want)
		}
	}
}
