package layerstore

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/alsfs"
)

// TestMountedStore mounts the store with FUSE and reads a layer the way
// containers/storage and overlayfs do: info, blob, every file under diff,
// and the use file.
func TestMountedStore(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	reg := newTestRegistry(t)
	l := stdLayer(t, 95, 400, 200)
	s, img, _ := servedFromLocal(t, reg, l, nil, Options{})
	mnt := t.TempDir()
	srv, err := alsfs.Mount(mnt, s.Store, alsfs.Options{SingleUser: true, ReadAheadKB: -1})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	refDir := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(img.ref)))
	dir := filepath.Join(refDir, l.digest.String())

	data, err := os.ReadFile(filepath.Join(dir, "info"))
	if err != nil {
		t.Fatalf("read info: %v", err)
	}
	var info map[string]any
	if err := json.Unmarshal(data, &info); err != nil || info["compressed-diff-digest"] != l.digest.String() {
		t.Errorf("info = %s (%v), want the layer's compressed digest", data, err)
	}
	for _, f := range l.files {
		want, ok := l.content(f.name)
		if !ok {
			continue
		}
		got, err := os.ReadFile(filepath.Join(dir, "diff", f.name))
		if err != nil {
			t.Fatalf("read diff/%s: %v", f.name, err)
		}
		if string(got) != string(want) {
			t.Errorf("diff/%s: got %d bytes differing from the %d of the layer", f.name, len(got), len(want))
		}
	}
	blob, err := os.ReadFile(filepath.Join(dir, "blob"))
	if err != nil || string(blob) != string(l.blob) {
		t.Errorf("read blob: %d bytes, %v, want the layer blob", len(blob), err)
	}
	if f, err := os.Create(filepath.Join(dir, "use")); !errors.Is(err, syscall.ENOENT) {
		if f != nil {
			f.Close()
		}
		t.Errorf("create use = %v, want ENOENT (reference counted)", err)
	}
	if _, ls := s.status(t, l.digest); ls == nil || ls.InUse != 1 || ls.ReadsServed == 0 {
		t.Errorf("status after use %+v, want in use 1 and reads served", ls)
	}
	if _, err := os.Stat(filepath.Join(refDir, digest.FromString("other").String())); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("stat of a layer not in the image = %v, want ENOENT", err)
	}
}
