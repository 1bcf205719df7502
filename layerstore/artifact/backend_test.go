package artifact

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/containers/image/v5/docker/reference"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/remote"
)

// backends returns every Backend implementation, each fresh and empty: the
// local directory store, and the registry store against a real (in-process)
// OCI registry.
func backends(t *testing.T) map[string]Backend {
	t.Helper()
	local, err := OpenLocal(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	c, err := remote.NewClient(remote.Options{InsecureRegistries: []string{u.Host}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	repo, err := reference.ParseNormalizedNamed(u.Host + "/lazypull/artifacts")
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Backend{"local": local, "registry": NewRegistry(c, repo)}
}

// TestBackendContract is the contract every Backend keeps.
func TestBackendContract(t *testing.T) {
	for name, b := range backends(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			data := []byte("a ztoc")
			d := digest.FromBytes(data)
			if _, err := b.ReadBlob(ctx, d); !errors.Is(err, ErrNotFound) {
				t.Fatalf("ReadBlob(missing) = %v, want ErrNotFound", err)
			}
			if err := b.WriteBlob(ctx, digest.FromString("other"), data); err == nil {
				t.Fatal("WriteBlob with a wrong digest succeeded")
			}
			if err := b.WriteBlob(ctx, d, data); err != nil {
				t.Fatal(err)
			}
			if err := b.WriteBlob(ctx, d, data); err != nil {
				t.Fatalf("WriteBlob again = %v, want nil (content-addressed)", err)
			}
			got, err := b.ReadBlob(ctx, d)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("ReadBlob = %q, %v", got, err)
			}

			key := ImageKey(digest.FromString("manifest"), 4<<20)
			if _, err := b.ReadRef(ctx, ImageRef, key); !errors.Is(err, ErrNotFound) {
				t.Fatalf("ReadRef(missing) = %v, want ErrNotFound", err)
			}
			if err := b.WriteRef(ctx, ImageRef, key, d); err != nil {
				t.Fatal(err)
			}
			if got, err := b.ReadRef(ctx, ImageRef, key); err != nil || got != d {
				t.Fatalf("ReadRef = %v, %v, want %v", got, err, d)
			}
			if _, err := b.ReadRef(ctx, LayerRef, key); !errors.Is(err, ErrNotFound) {
				t.Errorf("ReadRef(other kind) = %v, want ErrNotFound", err)
			}
			// Mappings are replaced.
			data2 := []byte("another ztoc")
			d2 := digest.FromBytes(data2)
			if err := b.WriteBlob(ctx, d2, data2); err != nil {
				t.Fatal(err)
			}
			if err := b.WriteRef(ctx, ImageRef, key, d2); err != nil {
				t.Fatal(err)
			}
			if got, err := b.ReadRef(ctx, ImageRef, key); err != nil || got != d2 {
				t.Fatalf("ReadRef after replace = %v, %v, want %v", got, err, d2)
			}
			for _, bad := range []string{"../escape", "", "a/b"} {
				if err := b.WriteRef(ctx, ImageRef, bad, d); err == nil {
					t.Errorf("WriteRef(%q) succeeded", bad)
				}
			}
			if err := b.WriteRef(ctx, RefKind("other"), key, d); err == nil {
				t.Error("WriteRef of an unknown kind succeeded")
			}
			if err := b.WriteRef(ctx, LayerRef, LayerKey(d, 1), "not-a-digest"); err == nil {
				t.Error("WriteRef to an invalid digest succeeded")
			}
		})
	}
}
