package artifact

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

func blobFile(l *Local, d digest.Digest) string {
	return filepath.Join(l.dir, "cas", group(d), blobName)
}

func TestLocalDanglingRef(t *testing.T) {
	ctx := context.Background()
	l, _ := OpenLocal(t.TempDir(), 0)
	data := []byte("a ztoc")
	d := digest.FromBytes(data)
	l.WriteBlob(ctx, d, data)
	key := LayerKey(digest.FromString("layer"), 4<<20)
	l.WriteRef(ctx, LayerRef, key, d)
	// A mapping whose blob is gone is missing, not an error later.
	if err := l.DeleteBlob(d); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadRef(ctx, LayerRef, key); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadRef(dangling) = %v, want ErrNotFound", err)
	}
}

func TestLocalCorruptBlobDropped(t *testing.T) {
	ctx := context.Background()
	for _, read := range []string{"ReadBlob", "Open"} {
		t.Run(read, func(t *testing.T) {
			l, _ := OpenLocal(t.TempDir(), 0)
			data := []byte("good bytes")
			d := digest.FromBytes(data)
			l.WriteBlob(ctx, d, data)
			if err := os.WriteFile(blobFile(l, d), []byte("bad bytes!"), 0o600); err != nil {
				t.Fatal(err)
			}
			var err error
			if read == "ReadBlob" {
				_, err = l.ReadBlob(ctx, d)
			} else {
				var f *os.File
				if f, _, err = l.Open(d); f != nil {
					f.Close()
				}
			}
			if err == nil || !strings.Contains(err.Error(), "dropped") {
				t.Fatalf("%s(corrupt) = %v, want a dropped error", read, err)
			}
			if _, err := os.Stat(blobFile(l, d)); !os.IsNotExist(err) || l.HasBlob(d) {
				t.Error("corrupt blob still stored")
			}
		})
	}
}

func TestLocalEvictionKeepsPinned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l, _ := OpenLocal(dir, 0)
	var ds []digest.Digest
	for i := 0; i < 4; i++ {
		data := []byte(strings.Repeat(string(rune('a'+i)), 100))
		d := digest.FromBytes(data)
		l.WriteBlob(ctx, d, data)
		old := time.Now().Add(time.Duration(i-10) * time.Hour)
		os.Chtimes(blobFile(l, d), old, old)
		ds = append(ds, d)
	}
	// Reopen so the modification times order the blobs.
	l, _ = OpenLocal(dir, 0)
	l.Pin(ds[0]) // the oldest, but in use
	l.SetMax(200)
	if s := l.Stats(); s.Entries != 2 || s.Bytes != 200 {
		t.Errorf("after SetMax(200): %d blobs, %d bytes; want 2, 200", s.Entries, s.Bytes)
	}
	for i, want := range []bool{true, false, false, true} {
		if got := l.HasBlob(ds[i]); got != want {
			t.Errorf("blob %d present = %v, want %v (pinned oldest and newest kept)", i, got, want)
		}
	}
}

func TestOpenLocalRemovesTemporariesAndOldLayout(t *testing.T) {
	dir := t.TempDir()
	l, _ := OpenLocal(dir, 0)
	l.WriteRef(context.Background(), LayerRef, LayerKey(digest.FromString("x"), 1), digest.FromString("y"))
	tmp := filepath.Join(dir, "refs", "layer", ".tmp-123")
	os.WriteFile(tmp, []byte("partial"), 0o600)
	old := filepath.Join(dir, "blobs", "sha256", "abc")
	os.MkdirAll(filepath.Dir(old), 0o700)
	os.WriteFile(old, []byte("old layout"), 0o600)
	if _, err := OpenLocal(dir, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Error("temporary file kept")
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Error("blob of the old layout kept")
	}
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
