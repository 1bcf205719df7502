package compat

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containers/image/v5/docker/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/tests/testenv/fstree"
	"github.com/lazypull/lazypull/ztoc"
)

// TestSociIndexServedByLazypull: an image indexed by SOCI's own tooling (its
// IndexBuilder, a v1 index pushed as a referrer with SOCI's zTOCs) is served
// lazily by `lazypull serve` to stock podman: every layer SOCI indexed comes
// from the store, the index came from the registry, and the mounted root
// filesystem equals the image's.
func TestSociIndexServedByLazypull(t *testing.T) {
	if os.Getenv("LAZYPULL_BIN") == "" {
		t.Skip("needs LAZYPULL_BIN (make test-compat builds and sets it)")
	}
	e := sharedSociIndexEnv(t)
	res, err := e.builder.Build(context.Background(), images.Image{Name: "compat-index", Target: e.target})
	if err != nil {
		t.Fatalf("SOCI Build: %v", err)
	}
	rawIndex := e.blob(t, res.Desc.Digest)
	ix, err := ztoc.ParseIndex(rawIndex)
	if err != nil {
		t.Fatal(err)
	}

	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	ctx := context.Background()
	if _, err := testenv.Push(ctx, reg.URL, "compat/soci", "v1", e.img.Dir); err != nil {
		t.Fatal(err)
	}
	// Push SOCI's artifacts as SOCI would: zTOC blobs, the empty config, the
	// index manifest as a referrer of the image manifest.
	c, err := remote.NewClient(remote.Options{InsecureRegistries: []string{reg.Host}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	repo, err := reference.ParseNormalizedNamed(reg.Host + "/compat/soci")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ix.Layers {
		b := e.blob(t, l.ZtocDigest)
		if err := c.PushBlob(ctx, repo, l.ZtocDigest, int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.PushBlob(ctx, repo, ztoc.EmptyConfigDigest, int64(len(ztoc.EmptyConfig)), bytes.NewReader(ztoc.EmptyConfig)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PushReferrer(ctx, repo, ocispec.MediaTypeImageManifest, rawIndex); err != nil {
		t.Fatal(err)
	}

	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{reg.Host}},
		"index":    map[string]any{"min_layer_size": "1KiB", "on_demand": "off"},
		"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
	}})
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}, StorageOpts: []string{d.ALSOption()}})
	ref := reg.Ref("compat/soci", "v1")
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, d.LogTail(20))
	}
	diffs, _ := filepath.Glob(filepath.Join(p.Root, "overlay", "*", "diff"))
	served := 0
	for _, dir := range diffs {
		if target, err := os.Readlink(dir); err == nil && strings.HasPrefix(target, d.MountPoint+"/") {
			served++
		}
	}
	if served != len(ix.Layers) {
		t.Errorf("%d layers served from the store, SOCI indexed %d", served, len(ix.Layers))
	}
	for _, l := range d.Status(t).Layers {
		if l.IndexSource != "registry" {
			t.Errorf("layer %s: index from %q, want the registry (SOCI's)", l.Digest, l.IndexSource)
		}
	}
	mnt, err := p.ImageMount(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer p.ImageUnmount(ref)
	got, err := testenv.Snapshot(mnt)
	if err != nil {
		t.Fatal(err)
	}
	want, err := e.img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	if diff := testenv.Diff(want, got, fstree.IgnoreXattrs("trusted.overlay.", "security.selinux")); len(diff) > 0 {
		t.Errorf("rootfs served through SOCI's index differs in %d places:\n%s", len(diff), strings.Join(diff[:min(len(diff), 20)], "\n"))
	}
	if st := d.Status(t); st.Reads.Errors != 0 {
		t.Errorf("%d read errors", st.Reads.Errors)
	}
}
