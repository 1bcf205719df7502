package artifact

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

func TestLocalBlobsAndRefs(t *testing.T) {
	ctx := context.Background()
	l, err := OpenLocal(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a ztoc")
	d := digest.FromBytes(data)
	if _, err := l.ReadBlob(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadBlob(missing) = %v, want ErrNotFound", err)
	}
	if err := l.WriteBlob(ctx, digest.FromString("other"), data); err == nil {
		t.Fatal("WriteBlob with a wrong digest succeeded")
	}
	if err := l.WriteBlob(ctx, d, data); err != nil {
		t.Fatal(err)
	}
	got, err := l.ReadBlob(ctx, d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadBlob = %q, %v", got, err)
	}
	key := ImageKey(digest.FromString("manifest"), 4<<20)
	if err := l.WriteRef(ctx, ImageRef, key, d); err != nil {
		t.Fatal(err)
	}
	if got, err := l.ReadRef(ctx, ImageRef, key); err != nil || got != d {
		t.Fatalf("ReadRef = %v, %v, want %v", got, err, d)
	}
	if _, err := l.ReadRef(ctx, LayerRef, key); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadRef(other kind) = %v, want ErrNotFound", err)
	}
	if err := l.WriteRef(ctx, ImageRef, "../escape", d); err == nil {
		t.Error("WriteRef accepted a key with a path")
	}
	// A mapping whose blob is gone is missing, not an error later.
	if err := l.DeleteBlob(d); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadRef(ctx, ImageRef, key); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadRef(dangling) = %v, want ErrNotFound", err)
	}
}

func TestLocalCorruptBlobDropped(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l, _ := OpenLocal(dir, 0)
	data := []byte("good bytes")
	d := digest.FromBytes(data)
	l.WriteBlob(ctx, d, data)
	if err := os.WriteFile(l.blobPath(d), []byte("bad bytes!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadBlob(ctx, d); err == nil || !strings.Contains(err.Error(), "dropped") {
		t.Fatalf("ReadBlob(corrupt) = %v, want a dropped error", err)
	}
	if _, err := os.Stat(l.blobPath(d)); !os.IsNotExist(err) {
		t.Error("corrupt blob still on disk")
	}
}

func TestLocalEvictionKeepsPinned(t *testing.T) {
	ctx := context.Background()
	l, _ := OpenLocal(t.TempDir(), 0)
	var ds []digest.Digest
	for i := 0; i < 4; i++ {
		data := bytes.Repeat([]byte{byte('a' + i)}, 100)
		d := digest.FromBytes(data)
		l.WriteBlob(ctx, d, data)
		old := time.Now().Add(time.Duration(i-10) * time.Hour)
		os.Chtimes(l.blobPath(d), old, old)
		ds = append(ds, d)
	}
	l.Pin(ds[0]) // the oldest, but in use
	l.SetMax(200)
	n, size, _ := l.Usage()
	if n != 2 || size != 200 {
		t.Errorf("after SetMax(200): %d blobs, %d bytes; want 2, 200", n, size)
	}
	for i, want := range []bool{true, false, true, true} {
		_, err := os.Stat(l.blobPath(ds[i]))
		if got := err == nil; i != 1 && i != 2 && got != want {
			t.Errorf("blob %d present = %v, want %v", i, got, want)
		}
	}
	if _, err := os.Stat(l.blobPath(ds[0])); err != nil {
		t.Error("pinned blob evicted")
	}
	if _, err := os.Stat(l.blobPath(ds[3])); err != nil {
		t.Error("most recent blob evicted")
	}
}

func TestOpenLocalRemovesTemporaries(t *testing.T) {
	dir := t.TempDir()
	l, _ := OpenLocal(dir, 0)
	tmp := filepath.Join(dir, "blobs", ".tmp-123")
	os.WriteFile(tmp, []byte("partial"), 0o600)
	if _, err := OpenLocal(dir, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Error("temporary file kept")
	}
	_ = l
}

func TestKeysDiffer(t *testing.T) {
	m := digest.FromString("m")
	if ImageKey(m, 1<<22) == ImageKey(m, 1<<20) {
		t.Error("span size not part of the image key")
	}
	if ImageKey(m, 1<<22) == LayerKey(m, 1<<22) {
		t.Error("image and layer keys collide")
	}
}
