package compat

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/plugins/content/local"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/ztoc"
)

// indexSpanSize is the span size SOCI's index builder uses in these tests
// (small, so that the small layers get several spans).
const indexSpanSize = 512 << 10

// sociIndexEnv is SOCI's index builder working on a generated image.
type sociIndexEnv struct {
	img      *imagegen.Image
	builder  *soci.IndexBuilder
	storeDir string // SOCI's local OCI store, where it writes zTOCs and indexes
	target   ocispec.Descriptor
}

// indexEnv is shared by the tests of this file: SOCI's artifacts database
// is a process-wide singleton (soci.NewDB opens the first path it is given
// and returns that database ever after), so SOCI's store must live as long
// as the test binary; TestMain removes it.
var indexEnv struct {
	once sync.Once
	dir  string
	env  *sociIndexEnv
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if indexEnv.dir != "" {
		os.RemoveAll(indexEnv.dir)
	}
	os.Exit(code)
}

// sharedSociIndexEnv returns the shared environment, setting it up on first
// use.
func sharedSociIndexEnv(t *testing.T) *sociIndexEnv {
	t.Helper()
	indexEnv.once.Do(func() {
		indexEnv.dir, indexEnv.err = os.MkdirTemp("", "lazypull-compat-soci-")
		if indexEnv.err == nil {
			indexEnv.env, indexEnv.err = newSociIndexEnv(indexEnv.dir)
		}
	})
	if indexEnv.err != nil {
		t.Fatalf("SOCI index builder: %v", indexEnv.err)
	}
	return indexEnv.env
}

// newSociIndexEnv generates (or takes from the cache) IndexImage and sets
// up SOCI's index builder over it under root: a containerd content store
// reading the image's blobs (through symlinks, so the cache stays
// untouched), SOCI's own local store and artifacts database.
//
// No prefetch paths are given: with them SOCI v0.16.1's builder appends to
// one slice from a goroutine per layer without a lock (soci_index.go:565,
// reported by the race detector), which can lose the prefetch artifact;
// TestIndexManifestInterop covers prefetch descriptors instead.
func newSociIndexEnv(root string) (*sociIndexEnv, error) {
	img, err := imagegen.Cached(imagegen.CacheDir(), IndexImage())
	if err != nil {
		return nil, fmt.Errorf("generate image: %w", err)
	}
	blobs := filepath.Join(root, "content", "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, err
	}
	names, err := os.ReadDir(filepath.Join(img.Dir, "blobs", "sha256"))
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if err := os.Symlink(filepath.Join(img.Dir, "blobs", "sha256", n.Name()), filepath.Join(blobs, n.Name())); err != nil {
			return nil, err
		}
	}
	cs, err := local.NewStore(filepath.Join(root, "content"))
	if err != nil {
		return nil, fmt.Errorf("content store: %w", err)
	}
	storeDir := filepath.Join(root, "soci-store")
	bs, err := store.NewSociStore(storeDir)
	if err != nil {
		return nil, fmt.Errorf("SOCI store: %w", err)
	}
	db, err := soci.NewDB(filepath.Join(root, "artifacts.db"))
	if err != nil {
		return nil, fmt.Errorf("SOCI artifacts db: %w", err)
	}
	b, err := soci.NewIndexBuilder(cs, bs, soci.WithMinLayerSize(0), soci.WithSpanSize(indexSpanSize),
		soci.WithArtifactsDb(db))
	if err != nil {
		return nil, err
	}
	return &sociIndexEnv{img: img, builder: b, storeDir: storeDir, target: ocispec.Descriptor{
		MediaType: img.ManifestMediaType, Digest: img.ManifestDigest, Size: img.ManifestSize}}, nil
}

// blob reads blob d from SOCI's store.
func (e *sociIndexEnv) blob(t *testing.T, d digest.Digest) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.storeDir, "blobs", d.Algorithm().String(), d.Encoded()))
	if err != nil {
		t.Fatalf("SOCI store blob %s: %v", d, err)
	}
	if digest.FromBytes(b) != d {
		t.Fatalf("SOCI store blob %s has another digest", d)
	}
	return b
}

// checkLayers checks that ix has one zTOC per layer of the image, in
// order, with SOCI's annotations, and that each zTOC, opened by lazypull,
// serves every file of its layer.
func (e *sociIndexEnv) checkLayers(t *testing.T, ix *ztoc.Index) {
	t.Helper()
	if len(ix.Prefetch) != 0 {
		t.Errorf("prefetch artifacts %+v, SOCI was asked for none", ix.Prefetch)
	}
	if len(ix.Layers) != len(e.img.Layers) {
		t.Fatalf("%d zTOCs, the image has %d layers", len(ix.Layers), len(e.img.Layers))
	}
	for i, il := range ix.Layers {
		l := e.img.Layers[i]
		if il.LayerDigest != l.Digest || il.LayerMediaType != l.MediaType || il.SpanSize != indexSpanSize {
			t.Errorf("zTOC %d is for layer %s (%q, span %d), want %s (%q, span %d)",
				i, il.LayerDigest, il.LayerMediaType, il.SpanSize, l.Digest, l.MediaType, indexSpanSize)
		}
		zb := e.blob(t, il.ZtocDigest)
		if int64(len(zb)) != il.ZtocSize {
			t.Errorf("zTOC %d has %d bytes, the index says %d", i, len(zb), il.ZtocSize)
		}
		x, err := ztoc.OpenLayerIndex(bytes.NewReader(zb), int64(len(zb)))
		if err != nil {
			t.Fatalf("OpenLayerIndex(SOCI's zTOC of layer %d): %v", i, err)
		}
		layer := Layer{Name: "layer" + strconv.Itoa(i), Path: e.img.BlobPath(l.Digest), Size: l.Size,
			Uncompressed: l.Compression == imagegen.Uncompressed, MultiMember: l.Compression == imagegen.GzipMultiMember}
		readEverything(t, x, readTruth(t, layer))
		ours, _ := ourBuild(t, layer, indexSpanSize)
		if err := ztoc.CompareTOC(x.Entries(), ours.Ztoc.TOC.FileMetadata); err != nil {
			t.Errorf("layer %d: SOCI's file table differs from ours: %v", i, err)
		}
		if got, want := x.Ztoc().CompressionInfo.SpanDigests, ours.Ztoc.CompressionInfo.SpanDigests; !slices.Equal(got, want) {
			t.Errorf("layer %d: SOCI's span digests differ from ours", i)
		}
	}
}

// TestSociIndexV1 has SOCI's index builder build a v1 SOCI index (the one
// found through the referrers API) of a generated image and reads it with
// lazypull: ParseIndex, then every file of every layer through SOCI's
// zTOCs.
func TestSociIndexV1(t *testing.T) {
	e := sharedSociIndexEnv(t)
	res, err := e.builder.Build(context.Background(), images.Image{Name: "compat-index", Target: e.target})
	if err != nil {
		t.Fatalf("SOCI Build: %v", err)
	}
	raw := e.blob(t, res.Desc.Digest)
	ix, err := ztoc.ParseIndex(raw)
	if err != nil {
		t.Fatalf("ParseIndex(SOCI's v1 index): %v\n%s", err, raw)
	}
	if ix.Version != 1 || ix.ArtifactType() != res.Desc.ArtifactType {
		t.Errorf("version %d artifact type %q, SOCI's descriptor says %q", ix.Version, ix.ArtifactType(), res.Desc.ArtifactType)
	}
	if ix.Subject == nil || ix.Subject.Digest != e.target.Digest || ix.Subject.Size != e.target.Size || ix.Subject.MediaType != e.target.MediaType {
		t.Errorf("subject %+v, want the image manifest %+v", ix.Subject, e.target)
	}
	if got := ix.Annotations[ztoc.AnnotationBuildToolIdentifier]; got != sociBuildTool {
		t.Errorf("build tool %q, want %q", got, sociBuildTool)
	}
	e.checkLayers(t, ix)
}

// TestSociIndexV2 has SOCI convert a generated image (`soci convert`: a v2
// SOCI index, the image manifest annotated with its digest, a new image
// index listing both) and finds and reads the index the way lazypull does.
func TestSociIndexV2(t *testing.T) {
	e := sharedSociIndexEnv(t)
	desc, err := e.builder.Convert(context.Background(), images.Image{Name: "compat-index", Target: e.target})
	if err != nil {
		t.Fatalf("SOCI Convert: %v", err)
	}
	manifests, err := ztoc.ParseReferrers(e.blob(t, desc.Digest))
	if err != nil {
		t.Fatalf("ParseReferrers(SOCI's image index): %v", err)
	}
	var image *ocispec.Descriptor
	for i, m := range manifests {
		if m.ArtifactType == "" && m.MediaType == ocispec.MediaTypeImageManifest {
			image = &manifests[i]
		}
	}
	if image == nil {
		t.Fatalf("no image manifest in SOCI's image index %+v", manifests)
	}
	want, ok, err := ztoc.IndexDigestFromManifestAnnotations(e.blob(t, image.Digest))
	if err != nil || !ok {
		t.Fatalf("IndexDigestFromManifestAnnotations = %s, %v, %v", want, ok, err)
	}
	sel, ok := ztoc.SelectSociV2Index(manifests, image.Digest)
	if !ok || sel.Digest != want {
		t.Fatalf("SelectSociV2Index = %s, %v; the manifest names %s", sel.Digest, ok, want)
	}
	raw := e.blob(t, sel.Digest)
	ix, err := ztoc.ParseIndex(raw)
	if err != nil {
		t.Fatalf("ParseIndex(SOCI's v2 index): %v\n%s", err, raw)
	}
	if ix.Version != 2 || ix.Subject != nil || sel.ArtifactType != ix.ArtifactType() {
		t.Errorf("version %d, subject %v, artifact type %q (descriptor %q)", ix.Version, ix.Subject, ix.ArtifactType(), sel.ArtifactType)
	}
	e.checkLayers(t, ix)
}

// TestIndexManifestInterop serializes SOCI index manifests on one side and
// parses them on the other: lazypull's BuildIndexV1/V2 read by SOCI's
// UnmarshalIndex, SOCI's NewIndex/MarshalIndex (with a prefetch artifact
// descriptor from SOCI's MarshalPrefetchArtifact) read by lazypull's
// ParseIndex.
func TestIndexManifestInterop(t *testing.T) {
	layerA, layerB := digest.FromString("layer a"), digest.FromString("layer b")
	ztocA, ztocB := digest.FromString("ztoc a"), digest.FromString("ztoc b")
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("manifest"), Size: 1234}
	ours := []ztoc.IndexLayer{
		{ZtocDigest: ztocA, ZtocSize: 1000, LayerDigest: layerA, LayerMediaType: ocispec.MediaTypeImageLayerGzip, SpanSize: 1 << 22},
		{ZtocDigest: ztocB, ZtocSize: 2000, LayerDigest: layerB, LayerMediaType: ocispec.MediaTypeImageLayer, SpanSize: 1 << 20,
			DisableXattrs: true},
	}
	// What SOCI's builder puts on zTOC descriptors (addSociLayerAnnotations).
	sociBlobs := []ocispec.Descriptor{
		{MediaType: soci.SociLayerMediaType, Digest: ztocA, Size: 1000, Annotations: map[string]string{
			soci.IndexAnnotationImageLayerDigest:    layerA.String(),
			soci.IndexAnnotationImageLayerMediaType: ocispec.MediaTypeImageLayerGzip,
			soci.IndexAnnotationSociSpanSize:        "4194304"}},
		{MediaType: soci.SociLayerMediaType, Digest: ztocB, Size: 2000, Annotations: map[string]string{
			soci.IndexAnnotationImageLayerDigest:    layerB.String(),
			soci.IndexAnnotationImageLayerMediaType: ocispec.MediaTypeImageLayer,
			soci.IndexAnnotationSociSpanSize:        "1048576",
			soci.IndexAnnotationDisableXAttrs:       "true"}},
	}
	// A prefetch artifact as SOCI's builder makes one (storePrefetchLayer).
	pa := soci.NewPrefetchArtifact()
	pa.AddPrefetchSpan(soci.PrefetchSpan{StartSpan: 1, EndSpan: 3})
	_, prefetch, err := soci.MarshalPrefetchArtifact(pa)
	if err != nil {
		t.Fatal(err)
	}
	prefetch.Annotations = map[string]string{soci.IndexAnnotationImageLayerDigest: layerA.String()}
	annotations := map[string]string{soci.IndexAnnotationBuildToolIdentifier: sociBuildTool}

	for _, tc := range []struct {
		version  int
		sociVer  soci.IndexVersion
		artifact string
	}{
		{1, soci.V1, soci.SociIndexArtifactTypeV1},
		{2, soci.V2, soci.SociIndexArtifactTypeV2},
	} {
		t.Run("v"+strconv.Itoa(tc.version), func(t *testing.T) {
			// lazypull -> SOCI
			var b []byte
			var err error
			if tc.version == 1 {
				b, _, err = ztoc.BuildIndexV1(ours, subject, nil)
			} else {
				b, _, err = ztoc.BuildIndexV2(ours, nil)
			}
			if err != nil {
				t.Fatal(err)
			}
			var si soci.Index
			if err := soci.UnmarshalIndex(b, &si); err != nil {
				t.Fatalf("SOCI UnmarshalIndex(ours): %v", err)
			}
			if si.ArtifactType != tc.artifact || si.MediaType != ocispec.MediaTypeImageManifest {
				t.Errorf("SOCI reads artifact type %q media type %q, want %q", si.ArtifactType, si.MediaType, tc.artifact)
			}
			if si.Config.MediaType != tc.artifact || si.Config.Digest != ztoc.EmptyConfigDigest || si.Config.Size != 2 {
				t.Errorf("SOCI reads config %+v", si.Config)
			}
			if (tc.version == 1) != (si.Subject != nil) || (si.Subject != nil && si.Subject.Digest != subject.Digest) {
				t.Errorf("SOCI reads subject %+v", si.Subject)
			}
			if got := si.Annotations[soci.IndexAnnotationBuildToolIdentifier]; got != ztoc.BuildToolIdentifier {
				t.Errorf("SOCI reads build tool %q", got)
			}
			if len(si.Blobs) != len(sociBlobs) {
				t.Fatalf("SOCI reads %d blobs, want %d", len(si.Blobs), len(sociBlobs))
			}
			for i, got := range si.Blobs {
				want := sociBlobs[i]
				if got.MediaType != want.MediaType || got.Digest != want.Digest || got.Size != want.Size || !maps.Equal(got.Annotations, want.Annotations) {
					t.Errorf("SOCI reads blob %d as %+v, want %+v", i, got, want)
				}
			}

			// SOCI -> lazypull
			var subj *ocispec.Descriptor
			if tc.version == 1 {
				subj = &subject
			}
			blobs := append(slices.Clone(sociBlobs), prefetch)
			sb, err := soci.MarshalIndex(soci.NewIndex(tc.sociVer, blobs, subj, annotations))
			if err != nil {
				t.Fatal(err)
			}
			ix, err := ztoc.ParseIndex(sb)
			if err != nil {
				t.Fatalf("ParseIndex(SOCI's): %v\n%s", err, sb)
			}
			if ix.Version != tc.version || (tc.version == 1) != (ix.Subject != nil) || ix.Annotations[ztoc.AnnotationBuildToolIdentifier] != sociBuildTool {
				t.Errorf("ParseIndex(SOCI's) = version %d subject %v annotations %v", ix.Version, ix.Subject, ix.Annotations)
			}
			if len(ix.Prefetch) != 1 || ix.Prefetch[0].Digest != prefetch.Digest || ix.Prefetch[0].MediaType != soci.SociPrefetchMediaType ||
				ix.Prefetch[0].Annotations[ztoc.AnnotationImageLayerDigest] != layerA.String() {
				t.Errorf("ParseIndex(SOCI's) prefetch %+v, want %+v", ix.Prefetch, prefetch)
			}
			if len(ix.Layers) != len(ours) {
				t.Fatalf("ParseIndex(SOCI's) has %d layers, want %d", len(ix.Layers), len(ours))
			}
			for i, got := range ix.Layers {
				want := ours[i]
				if got.ZtocDigest != want.ZtocDigest || got.ZtocSize != want.ZtocSize || got.LayerDigest != want.LayerDigest ||
					got.LayerMediaType != want.LayerMediaType || got.SpanSize != want.SpanSize || got.DisableXattrs != want.DisableXattrs ||
					len(got.Annotations) != 0 {
					t.Errorf("ParseIndex(SOCI's) layer %d = %+v, want %+v", i, got, want)
				}
			}
		})
	}
}
