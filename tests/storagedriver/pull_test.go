package storagedrivertest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containers/image/v5/pkg/blobinfocache/none"
	"github.com/containers/image/v5/signature"
	istorage "github.com/containers/image/v5/storage"
	"github.com/containers/storage"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore"
	storagedriver "github.com/lazypull/lazypull/storage_driver"
)

// TestLazyPullInProcess pulls the test image with containers/storage v1.59
// and containers/image v5.36 in this process, the way a podman fork's pull
// path calls the plugin: layers above min_layer_size come from the layer
// store (diff symlinked into its mount, almost nothing of them fetched, the
// pseudo-TOC identity recorded), the small one is pulled; the image,
// mounted through containers/storage, holds exactly the tree of an eager
// pull and of the image generator; an eager pull of the same image gets
// other IDs and coexists; a later pull reuses the verified layers.
func TestLazyPullInProcess(t *testing.T) {
	f := newFixture(t, testImage())
	store := newStore(t, "overlay", f.daemon.ALSOption())
	refStr := f.ref(testImage())
	img := f.images[refStr]
	ctx := context.Background()

	f.proxy.Reset()
	lazy, err := storagedriver.Pull(ctx, store, mustRef(t, refStr), pullOptions(t))
	if err != nil {
		t.Fatalf("lazy Pull: %v\n%s", err, f.daemon.LogTail(30))
	}
	stats := f.proxy.Stats()
	t.Logf("lazy pull took %s, fetched %s of blobs for a %s image", lazy.Took, mb(stats.BlobBytes()), mb(img.CompressedSize()))
	if got, limit := stats.BlobBytes(), img.CompressedSize()/10; got > limit {
		t.Errorf("lazy pull fetched %d blob bytes, want at most 10 %% of the image (%d)", got, limit)
	}

	served := lazyLayers(img)
	if len(lazy.Layers) != len(img.Layers) {
		t.Fatalf("pulled %d layers, want %d", len(lazy.Layers), len(img.Layers))
	}
	for i, l := range lazy.Layers {
		want := img.Layers[i]
		rec, err := store.Layer(l.ID)
		if err != nil {
			t.Fatalf("layer %d (%s): %v", i, l.ID, err)
		}
		if !served[want.Digest] {
			if l.Source != storagedriver.SourcePulled || rec.UncompressedDigest != want.DiffID || rec.CompressedDigest != want.Digest {
				t.Errorf("layer %d (small): source %s, digests %s/%s; want pulled with %s/%s", i, l.Source,
					rec.CompressedDigest, rec.UncompressedDigest, want.Digest, want.DiffID)
			}
			continue
		}
		if l.Source != storagedriver.SourceLazy {
			t.Errorf("layer %d: source %s, want lazy", i, l.Source)
		}
		if fetched := stats.ByDigest[want.Digest.String()].Bytes; fetched > 64<<10 {
			t.Errorf("layer %d: %d bytes of its blob fetched during the pull, want at most 64 KiB", i, fetched)
		}
		if target := diffLink(store.GraphRoot(), "overlay", l.ID); !strings.HasPrefix(target, f.daemon.MountPoint+"/") {
			t.Errorf("layer %d: diff is %q, want a symlink into %s", i, target, f.daemon.MountPoint)
		}
		// The pseudo-TOC identity, and nothing that could be mistaken for
		// verified content.
		if rec.TOCDigest != want.Digest || rec.CompressedDigest != "" || rec.UncompressedDigest != "" {
			t.Errorf("layer %d: toc %q compressed %q uncompressed %q; want toc %s only", i, rec.TOCDigest, rec.CompressedDigest, rec.UncompressedDigest, want.Digest)
		}
		if got := rec.Flags[layerstore.ExpectedLayerDiffIDFlag]; got != want.DiffID.String() {
			t.Errorf("layer %d: flag %s = %v, want %s", i, layerstore.ExpectedLayerDiffIDFlag, got, want.DiffID)
		}
		if byBlob, _ := store.LayersByCompressedDigest(want.Digest); len(byBlob) != 0 {
			t.Errorf("layer %d: the store finds %d layers by its compressed digest, want none", i, len(byBlob))
		}
	}
	for _, l := range f.daemon.Status(t).Layers {
		if l.IndexSource != "registry" {
			t.Errorf("daemon layer %s: index from %q, want the registry's SOCI index", l.Digest, l.IndexSource)
		}
	}
	checkImageRecord(t, store, lazy, refStr)

	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	lazyTree := imageTree(t, store, lazy.ImageID)
	checkTree(t, want, lazyTree, "lazily pulled top layer vs the generator's tree")

	// An ordinary pull of the same image: verified layers, other IDs.
	opts := pullOptions(t)
	opts.Eager = true
	eager, err := storagedriver.Pull(ctx, store, mustRef(t, refStr), opts)
	if err != nil {
		t.Fatalf("eager Pull: %v", err)
	}
	for i, l := range eager.Layers {
		if l.Source != storagedriver.SourcePulled {
			t.Errorf("eager layer %d: source %s, want pulled", i, l.Source)
		}
	}
	if want := img.ConfigDigest.Encoded(); eager.ImageID != want {
		t.Errorf("eager image ID = %s, want the config digest %s", eager.ImageID, want)
	}
	if eager.ImageID == lazy.ImageID {
		t.Errorf("lazy and eager pulls share image ID %s", eager.ImageID)
	}
	checkTree(t, lazyTree, imageTree(t, store, eager.ImageID), "eager pull vs lazy pull")
	// The name moved to the verified image; the lazy one is still there.
	if l, err := store.Image(lazy.ImageID); err != nil || slices.Contains(l.Names, refStr) {
		t.Errorf("lazy image after the eager pull: %v, names %v; want it kept without the name", err, l.Names)
	}

	// Pulling again prefers the verified layers the store now has.
	again, err := storagedriver.Pull(ctx, store, mustRef(t, refStr), pullOptions(t))
	if err != nil {
		t.Fatalf("third Pull: %v", err)
	}
	for i, l := range again.Layers {
		if l.Source != storagedriver.SourceReused || l.ID != eager.Layers[i].ID {
			t.Errorf("third pull layer %d: %s %s, want reused %s", i, l.Source, l.ID, eager.Layers[i].ID)
		}
	}
	if again.ImageID != eager.ImageID {
		t.Errorf("third pull image %s, want the verified image %s", again.ImageID, eager.ImageID)
	}
}

// checkImageRecord checks the image record a pull wrote, as
// containers/image's storage destination writes it.
func checkImageRecord(t *testing.T, store storage.Store, res *storagedriver.Result, name string) {
	t.Helper()
	rec, err := store.Image(res.ImageID)
	if err != nil {
		t.Fatalf("image %s: %v", res.ImageID, err)
	}
	if !slices.Contains(rec.Names, name) {
		t.Errorf("image names %v, want %s", rec.Names, name)
	}
	if top := res.Layers[len(res.Layers)-1].ID; rec.TopLayer != top {
		t.Errorf("image top layer %s, want %s", rec.TopLayer, top)
	}
	if rec.Digest != res.ManifestDigest || !slices.Contains(rec.Digests, res.ManifestDigest) {
		t.Errorf("image digest %s (all %v), want %s", rec.Digest, rec.Digests, res.ManifestDigest)
	}
	for _, key := range []string{"manifest", "manifest-" + res.ManifestDigest.String()} {
		if !slices.Contains(rec.BigDataNames, key) {
			t.Errorf("image big data %v lacks %s", rec.BigDataNames, key)
		}
	}
	if rec.Metadata != "{}" {
		t.Errorf("image metadata %q, want {}", rec.Metadata)
	}
}

// TestLazyImageReadableByContainersImage reads a lazily pulled image back
// through containers/image v5.36's storage transport, as podman >= 5 does
// for inspect, save and push: the config parses, and every layer's stream
// has the digest the image config gives it (for lazily served layers the
// expected-layer-diffid flag, the bytes read from the mount).
func TestLazyImageReadableByContainersImage(t *testing.T) {
	f := newFixture(t, testImage())
	store := newStore(t, "overlay", f.daemon.ALSOption())
	refStr := f.ref(testImage())
	img := f.images[refStr]
	ctx := context.Background()
	res, err := storagedriver.Pull(ctx, store, mustRef(t, refStr), pullOptions(t))
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	sref, err := istorage.Transport.ParseStoreReference(store, "@"+res.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	src, err := sref.NewImageSource(ctx, nil)
	if err != nil {
		t.Fatalf("open %s with containers/image: %v", res.ImageID, err)
	}
	defer src.Close()
	ci, err := sref.NewImage(ctx, nil) // what podman images and inspect use
	if err != nil {
		t.Fatalf("image %s: %v", res.ImageID, err)
	}
	defer ci.Close()
	inspect, err := ci.Inspect(ctx)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	if len(inspect.Layers) != len(img.Layers) {
		t.Errorf("inspect lists %d layers, want %d", len(inspect.Layers), len(img.Layers))
	}
	if size, err := ci.Size(); err != nil || size <= 0 {
		t.Errorf("image size = %d, %v; want a size", size, err)
	}
	infos, err := src.LayerInfosForCopy(ctx, nil)
	if err != nil {
		t.Fatalf("LayerInfosForCopy (what save and push use): %v", err)
	}
	if len(infos) != len(img.Layers) {
		t.Fatalf("%d layers to copy, want %d", len(infos), len(img.Layers))
	}
	for i, info := range infos {
		if info.Digest != img.Layers[i].DiffID {
			t.Errorf("layer %d to copy as %s, want its DiffID %s", i, info.Digest, img.Layers[i].DiffID)
		}
		rc, _, err := src.GetBlob(ctx, info, none.NoCache)
		if err != nil {
			t.Fatalf("layer %d: GetBlob: %v", i, err)
		}
		h := digest.Canonical.Digester()
		_, err = io.Copy(h.Hash(), rc)
		rc.Close()
		if err != nil {
			t.Fatalf("layer %d: read: %v", i, err)
		}
		if got := h.Digest(); got != img.Layers[i].DiffID {
			t.Errorf("layer %d: stream digest %s, want %s", i, got, img.Layers[i].DiffID)
		}
	}
}

// TestUnsafeLayerStoreAnswerIsRefused has an Additional Layer Store answer
// the pseudo-TOC lookup with a layer whose info also claims a compressed
// and an uncompressed digest (what a store for podman 4 answers): the pull
// must not keep that layer under a verified-looking identity, and pulls the
// layer instead. The store is a plain directory laid out like the mount,
// because the real daemon never answers this way (the fault cannot be
// produced on demand with the real part).
func TestUnsafeLayerStoreAnswerIsRefused(t *testing.T) {
	f := newRegistryFixture(t, testImage())
	refStr := f.ref(testImage())
	img := f.images[refStr]
	base := img.Layers[0]
	als := t.TempDir()
	dir := filepath.Join(als, base64.StdEncoding.EncodeToString([]byte(storagedriver.TOCRef(refStr))), base.Digest.String())
	if err := os.MkdirAll(filepath.Join(dir, "diff"), 0o755); err != nil {
		t.Fatal(err)
	}
	info := fmt.Sprintf(`{"toc-digest":%q,"compressed-diff-digest":%q,"diff-digest":%q,"compressed-size":%d,"diff-size":%d,"compression":2,"flags":{%q:%q}}`,
		base.Digest, base.Digest, base.DiffID, base.Size, base.DiffSize, layerstore.ExpectedLayerDiffIDFlag, base.DiffID)
	for name, content := range map[string]string{"info": info, "blob": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	store := newStore(t, "overlay", "overlay.additionallayerstore="+als+":ref")
	res, err := storagedriver.Pull(context.Background(), store, mustRef(t, refStr), pullOptions(t))
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if src := res.Layers[0].Source; src != storagedriver.SourcePulled {
		t.Errorf("base layer source %s, want pulled", src)
	}
	layers, err := store.LayersByUncompressedDigest(base.DiffID)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if target := diffLink(store.GraphRoot(), "overlay", l.ID); target != "" || l.TOCDigest != "" {
			t.Errorf("layer %s is indexed under DiffID %s with diff %q, TOC digest %q; want only the pulled layer", l.ID, base.DiffID, target, l.TOCDigest)
		}
	}
	if len(layers) != 1 {
		t.Errorf("%d layers under DiffID %s, want 1 (the pulled one)", len(layers), base.DiffID)
	}
}

// TestLazyPullManifestList pulls through an OCI image index: the pull picks
// this platform's image, serves its layers lazily, and records the index
// beside the image's manifest, as containers/image does.
func TestLazyPullManifestList(t *testing.T) {
	f := newFixture(t, testImage())
	img := f.images[f.ref(testImage())]
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":%q,"os":"linux"}}]}`,
		"application/vnd.oci.image.index.v1+json", img.ManifestMediaType, img.ManifestDigest, img.ManifestSize, runtime.GOARCH)
	req, err := http.NewRequest(http.MethodPut, f.reg.URL+"/v2/lazypull/"+testImage().Name+"/manifests/list", strings.NewReader(index))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push index: %s", resp.Status)
	}
	listRef := f.proxy.Host + "/lazypull/" + testImage().Name + ":list"
	store := newStore(t, "overlay", f.daemon.ALSOption())
	res, err := storagedriver.Pull(context.Background(), store, mustRef(t, listRef), pullOptions(t))
	if err != nil {
		t.Fatalf("Pull: %v\n%s", err, f.daemon.LogTail(20))
	}
	if res.ManifestDigest != img.ManifestDigest {
		t.Errorf("pulled manifest %s, want the image's %s", res.ManifestDigest, img.ManifestDigest)
	}
	if res.Layers[0].Source != storagedriver.SourceLazy {
		t.Errorf("base layer source %s, want lazy", res.Layers[0].Source)
	}
	rec, err := store.Image(res.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	listDigest := digest.FromString(index)
	for _, key := range []string{"manifest-" + listDigest.String(), "manifest-" + img.ManifestDigest.String(), "manifest"} {
		if !slices.Contains(rec.BigDataNames, key) {
			t.Errorf("image big data %v lacks %s", rec.BigDataNames, key)
		}
	}
	if !slices.Contains(rec.Digests, listDigest) || !slices.Contains(rec.Names, listRef) {
		t.Errorf("image digests %v, names %v; want %s and %s among them", rec.Digests, rec.Names, listDigest, listRef)
	}
}

// TestPullPolicyRejects checks the signature policy before anything but the
// manifest is read: a rejecting policy fails the pull with ErrRejected, no
// blob is fetched and nothing is stored.
func TestPullPolicyRejects(t *testing.T) {
	f := newRegistryFixture(t, testImage())
	store := newStore(t, "overlay")
	opts := pullOptions(t)
	policy, err := signature.NewPolicyFromBytes([]byte(`{"default":[{"type":"reject"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if opts.PolicyContext, err = signature.NewPolicyContext(policy); err != nil {
		t.Fatal(err)
	}
	defer opts.PolicyContext.Destroy()
	f.proxy.Reset()
	_, err = storagedriver.Pull(context.Background(), store, mustRef(t, f.ref(testImage())), opts)
	if !errors.Is(err, storagedriver.ErrRejected) {
		t.Errorf("Pull with a rejecting policy: %v, want ErrRejected", err)
	}
	if n := f.proxy.Stats().BlobBytes(); n != 0 {
		t.Errorf("%d blob bytes fetched for a rejected image, want 0", n)
	}
	if layers, err := store.Layers(); err != nil || len(layers) != 0 {
		t.Errorf("%d layers stored for a rejected image (%v), want 0", len(layers), err)
	}
}
