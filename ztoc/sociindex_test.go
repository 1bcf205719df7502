package ztoc

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func testLayers() []IndexLayer {
	return []IndexLayer{
		{
			ZtocDigest: digest.FromString("ztoc0"), ZtocSize: 1234,
			LayerDigest: digest.FromString("layer0"), LayerMediaType: ocispec.MediaTypeImageLayerGzip,
			SpanSize: DefaultSpanSize, DiffID: digest.FromString("diff0"), UncompressedSize: 55_000_000,
		},
		{
			ZtocDigest: digest.FromString("ztoc1"), ZtocSize: 99,
			LayerDigest: digest.FromString("layer1"), LayerMediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
			SpanSize: 1 << 20, DisableXattrs: true,
			Annotations: map[string]string{"org.example.note": "kept"},
		},
	}
}

var testSubject = ocispec.Descriptor{
	MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("manifest"), Size: 1024,
}

func TestIndexV1RoundTrip(t *testing.T) {
	b, desc, err := BuildIndexV1(testLayers(), testSubject, nil)
	if err != nil {
		t.Fatalf("BuildIndexV1: %v", err)
	}
	checkGolden(t, "index_v1.golden.json", b)
	if desc.Digest != digest.FromBytes(b) || desc.Size != int64(len(b)) || desc.ArtifactType != MediaTypeSociIndexV1 ||
		desc.MediaType != ocispec.MediaTypeImageManifest {
		t.Errorf("descriptor = %+v, want the manifest's digest/size with artifact type %s", desc, MediaTypeSociIndexV1)
	}
	ix, err := ParseIndex(b)
	if err != nil {
		t.Fatalf("ParseIndex: %v", err)
	}
	want := &Index{Version: 1, Layers: testLayers(), Subject: &testSubject,
		Annotations: map[string]string{AnnotationBuildToolIdentifier: BuildToolIdentifier}}
	if !reflect.DeepEqual(ix, want) {
		t.Fatalf("ParseIndex = %+v\nwant %+v", ix, want)
	}
	d, ok := ix.ZtocFor(digest.FromString("layer1"))
	if !ok || d.Digest != digest.FromString("ztoc1") || d.Size != 99 || d.MediaType != MediaTypeZtoc ||
		d.Annotations[AnnotationDisableXattrs] != "true" || d.Annotations["org.example.note"] != "kept" {
		t.Errorf("ZtocFor(layer1) = %+v, %v; want the ztoc1 descriptor", d, ok)
	}
	if _, ok := ix.ZtocFor(digest.FromString("other")); ok {
		t.Error("ZtocFor(unknown layer) found a zTOC")
	}
	// The wire form is what SOCI expects.
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	cfg := m["config"].(map[string]any)
	if cfg["mediaType"] != MediaTypeSociIndexV1 || cfg["digest"] != "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" || cfg["size"] != 2.0 {
		t.Errorf("config = %v, want the empty JSON object with the v1 media type", cfg)
	}
	l0 := m["layers"].([]any)[0].(map[string]any)["annotations"].(map[string]any)
	if l0[AnnotationImageLayerDigest] != digest.FromString("layer0").String() || l0[AnnotationSpanSize] != "4194304" ||
		l0[AnnotationDiffID] != digest.FromString("diff0").String() || l0[AnnotationUncompressedSize] != "55000000" {
		t.Errorf("layer 0 annotations = %v", l0)
	}
}

func TestIndexV2RoundTrip(t *testing.T) {
	b, desc, err := BuildIndexV2(testLayers(), map[string]string{AnnotationBuildToolIdentifier: "custom"})
	if err != nil {
		t.Fatalf("BuildIndexV2: %v", err)
	}
	checkGolden(t, "index_v2.golden.json", b)
	if desc.ArtifactType != MediaTypeSociIndexV2 {
		t.Errorf("artifact type %q, want %q", desc.ArtifactType, MediaTypeSociIndexV2)
	}
	if strings.Contains(string(b), `"subject"`) {
		t.Error("v2 index has a subject")
	}
	ix, err := ParseIndex(b)
	if err != nil {
		t.Fatalf("ParseIndex: %v", err)
	}
	want := &Index{Version: 2, Layers: testLayers(), Annotations: map[string]string{AnnotationBuildToolIdentifier: "custom"}}
	if !reflect.DeepEqual(ix, want) {
		t.Fatalf("ParseIndex = %+v\nwant %+v", ix, want)
	}
}

// sociV1Index is a v1 index as SOCI writes it (field order and content of
// its json.Marshal of an ocispec.Manifest), with a prefetch artifact.
const sociV1Index = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
	`"config":{"mediaType":"application/vnd.amazon.soci.index.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},` +
	`"layers":[{"mediaType":"application/octet-stream","digest":"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","size":30,` +
	`"annotations":{"com.amazon.soci.image-layer-digest":"sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9","com.amazon.soci.image-layer-mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","com.amazon.soci.span-size":"4194304"}},` +
	`{"mediaType":"application/vnd.amazon.soci.prefetch.v1+json","digest":"sha256:baa5a0964d3320fbc0c6a922140453c8513ea24ab8fd0577034804a967248096","size":10,` +
	`"annotations":{"com.amazon.soci.image-layer-digest":"sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9"}}],` +
	`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9","size":500},` +
	`"annotations":{"com.amazon.soci.build-tool-identifier":"AWS SOCI CLI v0.2"}}`

func TestParseSociIndexWithPrefetch(t *testing.T) {
	ix, err := ParseIndex([]byte(sociV1Index))
	if err != nil {
		t.Fatalf("ParseIndex(SOCI's v1 index): %v", err)
	}
	if ix.Version != 1 || len(ix.Layers) != 1 || len(ix.Prefetch) != 1 || ix.Subject == nil ||
		ix.Annotations[AnnotationBuildToolIdentifier] != "AWS SOCI CLI v0.2" {
		t.Fatalf("ParseIndex = %+v; want v1, 1 zTOC, 1 prefetch artifact, a subject", ix)
	}
	if l := ix.Layers[0]; l.SpanSize != 4194304 || l.LayerMediaType != ocispec.MediaTypeImageLayerGzip || l.Annotations != nil {
		t.Errorf("layer = %+v", l)
	}
	// Re-marshalling SOCI's index gives its bytes back.
	b, _, err := ix.Marshal()
	if err != nil || string(b) != sociV1Index {
		t.Errorf("Marshal(ParseIndex(SOCI's index)) differs (err %v):\n%s\nwant\n%s", err, b, sociV1Index)
	}
}

func TestParseIndexMalformed(t *testing.T) {
	replace := func(old, new string) []byte {
		if !strings.Contains(sociV1Index, old) {
			t.Fatalf("test bug: %q not in the index", old)
		}
		return []byte(strings.Replace(sociV1Index, old, new, 1))
	}
	const layerDigestAnn = `"com.amazon.soci.image-layer-digest":"sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",`
	tests := map[string][]byte{
		"not json":                  []byte("{"),
		"too large":                 []byte(`{"x":"` + strings.Repeat("a", DefaultMaxIndexSize) + `"}`),
		"schema version":            replace(`"schemaVersion":2`, `"schemaVersion":1`),
		"manifest media type":       replace(`"mediaType":"application/vnd.oci.image.manifest.v1+json","config"`, `"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config"`),
		"config media type":         replace(`"application/vnd.amazon.soci.index.v1+json"`, `"application/vnd.amazon.soci.index.v3+json"`),
		"config digest":             replace(`44136fa355`, `44136fa356`),
		"config size":               replace(`"size":2}`, `"size":3}`),
		"artifact type mismatch":    replace(`"schemaVersion":2,`, `"schemaVersion":2,"artifactType":"application/x",`),
		"missing layer digest":      replace(layerDigestAnn, ``),
		"bad layer digest":          replace(`"com.amazon.soci.image-layer-digest":"sha256:fcde`, `"com.amazon.soci.image-layer-digest":"sha256:xcde`),
		"bad ztoc digest":           replace(`"sha256:2c26b46b`, `"sha256:2c26b46`),
		"negative size":             replace(`"size":30`, `"size":-30`),
		"zero ztoc size":            replace(`"size":30`, `"size":0`),
		"bad span size":             replace(`"4194304"`, `"4M"`),
		"unknown layer media type":  replace(`"mediaType":"application/octet-stream"`, `"mediaType":"application/x-foo"`),
		"v1 without subject":        replace(`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9","size":500},`, ``),
		"v2 with subject":           replace(`"application/vnd.amazon.soci.index.v1+json"`, `"application/vnd.amazon.soci.index.v2+json"`),
		"bad diff id":               replace(`"com.amazon.soci.span-size":"4194304"`, `"com.amazon.soci.span-size":"4194304","io.github.lazypull.diff-id":"sha256:zz"`),
		"bad uncompressed size":     replace(`"com.amazon.soci.span-size":"4194304"`, `"com.amazon.soci.span-size":"4194304","io.github.lazypull.uncompressed-size":"-1"`),
		"bad disable-xattrs":        replace(`"com.amazon.soci.span-size":"4194304"`, `"com.amazon.soci.span-size":"4194304","com.amazon.soci.disable-xattrs":"maybe"`),
		"subject without mediatype": replace(`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json",`, `"subject":{`),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			ix, err := ParseIndex(b)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseIndex = %+v, %v; want ErrMalformed", ix, err)
			}
		})
	}
}

func TestBuildIndexRejects(t *testing.T) {
	reserved := testLayers()
	reserved[1].Annotations = map[string]string{AnnotationSpanSize: "1"}
	badDigest := testLayers()
	badDigest[0].LayerDigest = "sha256:nothex"
	tests := map[string]func() error{
		"no layers": func() error { _, _, err := BuildIndexV2(nil, nil); return err },
		"reserved annotation": func() error {
			_, _, err := BuildIndexV2(reserved, nil)
			return err
		},
		"bad layer digest": func() error { _, _, err := BuildIndexV1(badDigest, testSubject, nil); return err },
		"bad subject": func() error {
			_, _, err := BuildIndexV1(testLayers(), ocispec.Descriptor{Digest: "x"}, nil)
			return err
		},
	}
	for name, f := range tests {
		if err := f(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func TestIndexDigestFromManifestAnnotations(t *testing.T) {
	idx := digest.FromString("soci index")
	tests := []struct {
		name     string
		manifest string
		want     digest.Digest
		ok       bool
		wantErr  bool
	}{
		{"annotated", `{"schemaVersion":2,"annotations":{"com.amazon.soci.index-digest":"` + idx.String() + `"}}`, idx, true, false},
		{"no annotations", `{"schemaVersion":2}`, "", false, false},
		{"other annotations", `{"annotations":{"a":"b"}}`, "", false, false},
		{"bad digest", `{"annotations":{"com.amazon.soci.index-digest":"sha256:1"}}`, "", false, true},
		{"not json", `[`, "", false, true},
	}
	for _, tt := range tests {
		got, ok, err := IndexDigestFromManifestAnnotations([]byte(tt.manifest))
		if got != tt.want || ok != tt.ok || (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("%s: IndexDigestFromManifestAnnotations = %q, %v, %v; want %q, %v, error %v", tt.name, got, ok, err, tt.want, tt.ok, tt.wantErr)
		}
	}
}

func TestReferrers(t *testing.T) {
	manifest := digest.FromString("image manifest")
	tag, err := ReferrersTag(manifest)
	if err != nil || tag != "sha256-"+manifest.Encoded() {
		t.Errorf("ReferrersTag = %q, %v; want sha256-<hex>", tag, err)
	}
	if _, err := ReferrersTag("sha256:short"); err == nil {
		t.Error("ReferrersTag(invalid digest) succeeded")
	}

	b, desc, err := BuildIndexV1(testLayers(), testSubject, nil)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := ParseIndex(b)
	if err != nil {
		t.Fatal(err)
	}
	v1 := ix.ReferrerDescriptor(desc)
	sig := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/vnd.dev.cosign.artifact.sig.v1+json",
		Digest: digest.FromString("sig"), Size: 10}
	list, err := BuildReferrersIndex([]ocispec.Descriptor{sig, v1})
	if err != nil {
		t.Fatalf("BuildReferrersIndex: %v", err)
	}
	got, err := ParseReferrers(list)
	if err != nil {
		t.Fatalf("ParseReferrers: %v", err)
	}
	if !reflect.DeepEqual(got, []ocispec.Descriptor{sig, v1}) {
		t.Fatalf("ParseReferrers = %+v, want the two descriptors", got)
	}
	sel := SelectSociV1Indexes(got)
	if len(sel) != 1 || sel[0].Digest != desc.Digest || sel[0].Annotations[AnnotationBuildToolIdentifier] != BuildToolIdentifier {
		t.Errorf("SelectSociV1Indexes = %+v, want the SOCI index with its annotations", sel)
	}
	empty, err := BuildReferrersIndex(nil)
	if err != nil || !strings.Contains(string(empty), `"manifests":[]`) {
		t.Errorf("BuildReferrersIndex(nil) = %s, %v; want an empty manifests list", empty, err)
	}

	// v2: soci convert's image index lists the SOCI index with the image
	// manifest digest annotation.
	v2 := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: MediaTypeSociIndexV2,
		Digest: digest.FromString("v2 index"), Size: 700, Annotations: map[string]string{AnnotationImageManifestDigest: manifest.String()}}
	image := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: manifest, Size: 900}
	if d, ok := SelectSociV2Index([]ocispec.Descriptor{image, v2}, manifest); !ok || d.Digest != v2.Digest {
		t.Errorf("SelectSociV2Index = %+v, %v; want the v2 index", d, ok)
	}
	if _, ok := SelectSociV2Index([]ocispec.Descriptor{image, v2}, digest.FromString("other")); ok {
		t.Error("SelectSociV2Index found an index for another manifest")
	}

	for name, in := range map[string]string{
		"not json":       `{`,
		"media type":     `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`,
		"schema version": `{"schemaVersion":1,"manifests":[]}`,
		"bad descriptor": `{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:1","size":1}]}`,
	} {
		if _, err := ParseReferrers([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseReferrers(%s) = %v, want ErrMalformed", name, err)
		}
	}
}
