package ztoc

// This file builds and parses SOCI index manifests (v1 and v2) and the
// documents used to find them: the image manifest's index-digest annotation
// (v2), the image index that `soci convert` writes (v2) and OCI referrers
// lists, whether from the referrers API or the referrers tag (v1).
//
// A SOCI index is an OCI image manifest whose config is the 2-byte blob
// "{}" with the SOCI index media type, whose layers are the zTOCs (and
// optional prefetch artifacts) annotated with the image layer they index,
// and which names the image manifest as "subject" in v1 only. Manifests
// are serialized with encoding/json over the image-spec types, as SOCI
// does, so equal inputs give identical bytes.
//
// lazypull records data SOCI lacks (a layer's DiffID and uncompressed
// size) as extra annotations of the zTOC descriptors, with keys under
// "io.github.lazypull."; SOCI ignores unknown annotations.

import (
	"encoding/json"
	"fmt"
	"maps"
	"strconv"

	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of SOCI artifacts.
const (
	// MediaTypeSociIndexV1 is the config media type (and artifact type) of a
	// v1 SOCI index, found through the referrers API.
	MediaTypeSociIndexV1 = "application/vnd.amazon.soci.index.v1+json"
	// MediaTypeSociIndexV2 is the config media type (and artifact type) of a
	// v2 SOCI index, found through the image manifest's annotation.
	MediaTypeSociIndexV2 = "application/vnd.amazon.soci.index.v2+json"
	// MediaTypeZtoc is the media type of a zTOC blob in a SOCI index.
	MediaTypeZtoc = "application/octet-stream"
	// MediaTypeSociPrefetch is the media type of a prefetch artifact.
	MediaTypeSociPrefetch = "application/vnd.amazon.soci.prefetch.v1+json"
)

// Annotation keys of SOCI artifacts.
const (
	// AnnotationImageLayerDigest names, on a zTOC or prefetch descriptor,
	// the image layer it belongs to.
	AnnotationImageLayerDigest = "com.amazon.soci.image-layer-digest"
	// AnnotationImageLayerMediaType holds, on a zTOC descriptor, the media
	// type of the image layer.
	AnnotationImageLayerMediaType = "com.amazon.soci.image-layer-mediaType"
	// AnnotationSpanSize holds, on a zTOC descriptor, the span size in bytes
	// (decimal).
	AnnotationSpanSize = "com.amazon.soci.span-size"
	// AnnotationDisableXattrs is "true" on a zTOC descriptor whose layer has
	// no extended attributes.
	AnnotationDisableXattrs = "com.amazon.soci.disable-xattrs"
	// AnnotationBuildToolIdentifier names, on a SOCI index, its builder.
	AnnotationBuildToolIdentifier = "com.amazon.soci.build-tool-identifier"
	// AnnotationImageManifestDigest names, on a v2 SOCI index descriptor in
	// an image index, the image manifest the SOCI index is for.
	AnnotationImageManifestDigest = "com.amazon.soci.image-manifest-digest"
	// AnnotationSociIndexDigest names, on an image manifest, its v2 SOCI
	// index.
	AnnotationSociIndexDigest = "com.amazon.soci.index-digest"
)

// lazypull's own annotations on zTOC descriptors.
const (
	// AnnotationPrefix is the prefix of every lazypull annotation.
	AnnotationPrefix = "io.github.lazypull."
	// AnnotationDiffID holds the layer's DiffID (digest of the uncompressed
	// tar stream).
	AnnotationDiffID = AnnotationPrefix + "diff-id"
	// AnnotationUncompressedSize holds the size in bytes (decimal) of the
	// layer's uncompressed tar stream.
	AnnotationUncompressedSize = AnnotationPrefix + "uncompressed-size"
)

// EmptyConfig is the config blob of every SOCI index.
var EmptyConfig = []byte("{}")

// EmptyConfigDigest is the digest of EmptyConfig.
var EmptyConfigDigest = digest.FromBytes(EmptyConfig)

// mediaTypeDockerManifestList is accepted where an image index is expected.
const mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"

// IndexLayer describes one zTOC of a SOCI index.
type IndexLayer struct {
	// ZtocDigest and ZtocSize identify the serialized zTOC blob.
	ZtocDigest digest.Digest
	ZtocSize   int64
	// LayerDigest is the digest of the (compressed) image layer indexed.
	LayerDigest digest.Digest
	// LayerMediaType is the image layer's media type ("" if not recorded).
	LayerMediaType string
	// SpanSize is the span size in bytes (0 if not recorded).
	SpanSize int64
	// DisableXattrs is set when the layer has no extended attributes.
	DisableXattrs bool
	// DiffID is lazypull's record of the layer's DiffID ("" if unknown).
	DiffID digest.Digest
	// UncompressedSize is lazypull's record of the size of the layer's tar
	// stream (0 if unknown).
	UncompressedSize int64
	// Annotations holds any other annotations of the zTOC descriptor; keys
	// of the fields above are not allowed here.
	Annotations map[string]string
}

// Index is a parsed SOCI index.
type Index struct {
	// Version is 1 or 2.
	Version int
	// Layers lists the zTOCs in manifest order.
	Layers []IndexLayer
	// Prefetch lists the prefetch artifacts, kept as they are.
	Prefetch []ocispec.Descriptor
	// Subject is the image manifest a v1 index refers to (nil in v2).
	Subject *ocispec.Descriptor
	// Annotations are the manifest's annotations (including the build
	// tool identifier).
	Annotations map[string]string
}

// ArtifactType returns the index's config media type (its artifact type).
func (ix *Index) ArtifactType() string {
	if ix.Version == 1 {
		return MediaTypeSociIndexV1
	}
	return MediaTypeSociIndexV2
}

// ZtocFor returns the descriptor of the zTOC that indexes layerDigest (the
// first one when several do).
func (ix *Index) ZtocFor(layerDigest digest.Digest) (ocispec.Descriptor, bool) {
	for i := range ix.Layers {
		if l := &ix.Layers[i]; l.LayerDigest == layerDigest {
			return l.descriptor(), true
		}
	}
	return ocispec.Descriptor{}, false
}

// descriptor returns the zTOC descriptor with all annotations.
func (l *IndexLayer) descriptor() ocispec.Descriptor {
	a := maps.Clone(l.Annotations)
	if a == nil {
		a = make(map[string]string)
	}
	a[AnnotationImageLayerDigest] = l.LayerDigest.String()
	if l.LayerMediaType != "" {
		a[AnnotationImageLayerMediaType] = l.LayerMediaType
	}
	if l.SpanSize != 0 {
		a[AnnotationSpanSize] = strconv.FormatInt(l.SpanSize, 10)
	}
	if l.DisableXattrs {
		a[AnnotationDisableXattrs] = "true"
	}
	if l.DiffID != "" {
		a[AnnotationDiffID] = l.DiffID.String()
	}
	if l.UncompressedSize != 0 {
		a[AnnotationUncompressedSize] = strconv.FormatInt(l.UncompressedSize, 10)
	}
	return ocispec.Descriptor{MediaType: MediaTypeZtoc, Digest: l.ZtocDigest, Size: l.ZtocSize, Annotations: a}
}

// reservedLayerKeys are the annotation keys IndexLayer holds as fields.
var reservedLayerKeys = []string{
	AnnotationImageLayerDigest, AnnotationImageLayerMediaType, AnnotationSpanSize,
	AnnotationDisableXattrs, AnnotationDiffID, AnnotationUncompressedSize,
}

// validate checks l's fields (not its extra annotations).
func (l *IndexLayer) validate() error {
	if err := l.ZtocDigest.Validate(); err != nil {
		return malformed("zTOC digest %q: %v", l.ZtocDigest, err)
	}
	if l.ZtocSize <= 0 {
		return malformed("zTOC size %d not positive", l.ZtocSize)
	}
	if err := l.LayerDigest.Validate(); err != nil {
		return malformed("layer digest %q: %v", l.LayerDigest, err)
	}
	if l.SpanSize < 0 || l.UncompressedSize < 0 {
		return malformed("negative span size %d or uncompressed size %d", l.SpanSize, l.UncompressedSize)
	}
	if l.DiffID != "" {
		if err := l.DiffID.Validate(); err != nil {
			return malformed("diff id %q: %v", l.DiffID, err)
		}
	}
	return nil
}

// BuildIndexV1 returns a v1 SOCI index for the image manifest subject and
// its descriptor. The build tool identifier annotation is set to
// BuildToolIdentifier unless annotations has one.
func BuildIndexV1(layers []IndexLayer, subject ocispec.Descriptor, annotations map[string]string) ([]byte, ocispec.Descriptor, error) {
	return buildIndex(&Index{Version: 1, Layers: layers, Subject: &subject, Annotations: annotations})
}

// BuildIndexV2 returns a v2 SOCI index (no subject) and its descriptor.
// The build tool identifier annotation is set as in BuildIndexV1.
func BuildIndexV2(layers []IndexLayer, annotations map[string]string) ([]byte, ocispec.Descriptor, error) {
	return buildIndex(&Index{Version: 2, Layers: layers, Annotations: annotations})
}

func buildIndex(ix *Index) ([]byte, ocispec.Descriptor, error) {
	if len(ix.Layers) == 0 {
		return nil, ocispec.Descriptor{}, malformed("ztoc: build SOCI index: no zTOCs")
	}
	ix.Annotations = maps.Clone(ix.Annotations)
	if ix.Annotations == nil {
		ix.Annotations = make(map[string]string)
	}
	if _, ok := ix.Annotations[AnnotationBuildToolIdentifier]; !ok {
		ix.Annotations[AnnotationBuildToolIdentifier] = BuildToolIdentifier
	}
	return ix.Marshal()
}

// Marshal validates ix and serializes it as an OCI image manifest: zTOCs
// first, then prefetch artifacts. The returned descriptor has the image
// manifest media type, the index's artifact type, digest and size (no
// annotations; see ReferrerDescriptor).
func (ix *Index) Marshal() ([]byte, ocispec.Descriptor, error) {
	if err := ix.validate(); err != nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("ztoc: marshal SOCI index: %w", err)
	}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{
			MediaType: ix.ArtifactType(), Digest: EmptyConfigDigest, Size: int64(len(EmptyConfig)),
		},
		Annotations: ix.Annotations,
	}
	for i := range ix.Layers {
		m.Layers = append(m.Layers, ix.Layers[i].descriptor())
	}
	m.Layers = append(m.Layers, ix.Prefetch...)
	if ix.Subject != nil {
		s := *ix.Subject
		m.Subject = &s
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("ztoc: marshal SOCI index: %w", err)
	}
	return b, ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest, ArtifactType: ix.ArtifactType(),
		Digest: digest.FromBytes(b), Size: int64(len(b)),
	}, nil
}

// validate checks the rules shared by Marshal and ParseIndex.
func (ix *Index) validate() error {
	switch {
	case ix.Version != 1 && ix.Version != 2:
		return malformed("version %d", ix.Version)
	case ix.Version == 1 && ix.Subject == nil:
		return malformed("v1 index without subject")
	case ix.Version == 2 && ix.Subject != nil:
		return malformed("v2 index with a subject")
	case ix.Subject != nil:
		if err := validateDescriptor(*ix.Subject); err != nil || ix.Subject.MediaType == "" {
			return malformed("subject (media type %q): %v", ix.Subject.MediaType, err)
		}
	}
	for i := range ix.Layers {
		l := &ix.Layers[i]
		if err := l.validate(); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		for _, k := range reservedLayerKeys {
			if _, ok := l.Annotations[k]; ok {
				return malformed("layer %d: annotation %s set in Annotations", i, k)
			}
		}
	}
	for i, p := range ix.Prefetch {
		if err := validateDescriptor(p); err != nil || p.MediaType != MediaTypeSociPrefetch {
			return malformed("prefetch artifact %d (media type %q): %v", i, p.MediaType, err)
		}
	}
	return nil
}

// ReferrerDescriptor returns desc (from Marshal) as a referrers list shows
// it: with the index's artifact type and annotations.
func (ix *Index) ReferrerDescriptor(desc ocispec.Descriptor) ocispec.Descriptor {
	desc.ArtifactType = ix.ArtifactType()
	desc.Annotations = maps.Clone(ix.Annotations)
	return desc
}

func validateDescriptor(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("digest %q: %w", d.Digest, err)
	}
	if d.Size < 0 {
		return fmt.Errorf("negative size %d", d.Size)
	}
	return nil
}

// ParseIndex parses and validates a v1 or v2 SOCI index manifest. It
// rejects (ErrMalformed) documents larger than Limits.MaxIndexSize (also
// ErrLimit; opts select the limits, default DefaultLimits), other media
// types, a config other than the "{}" blob, a v1 index without subject or
// a v2 index with one, invalid digests or sizes, zTOC descriptors without
// a valid image-layer-digest annotation or with unparsable span size, xattr
// or lazypull annotations, and layers that are neither zTOCs nor prefetch
// artifacts.
func ParseIndex(b []byte, opts ...Option) (*Index, error) {
	lim := applyOptions(opts)
	if len(b) > lim.MaxIndexSize {
		return nil, overLimit(true, "ztoc: parse SOCI index: %d bytes exceed the %d-byte limit", len(b), lim.MaxIndexSize)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, malformed("ztoc: parse SOCI index: %v", err)
	}
	if m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest {
		return nil, malformed("ztoc: parse SOCI index: schema version %d, media type %q", m.SchemaVersion, m.MediaType)
	}
	ix := &Index{Annotations: m.Annotations}
	switch m.Config.MediaType {
	case MediaTypeSociIndexV1:
		ix.Version = 1
	case MediaTypeSociIndexV2:
		ix.Version = 2
	default:
		return nil, malformed("ztoc: parse SOCI index: config media type %q", m.Config.MediaType)
	}
	if m.Config.Digest != EmptyConfigDigest || m.Config.Size != int64(len(EmptyConfig)) {
		return nil, malformed("ztoc: parse SOCI index: config %s (%d bytes) is not the empty JSON object", m.Config.Digest, m.Config.Size)
	}
	if m.ArtifactType != "" && m.ArtifactType != m.Config.MediaType {
		return nil, malformed("ztoc: parse SOCI index: artifact type %q differs from config media type", m.ArtifactType)
	}
	if m.Subject != nil {
		s := *m.Subject
		ix.Subject = &s
	}
	for i, d := range m.Layers {
		if err := validateDescriptor(d); err != nil {
			return nil, malformed("ztoc: parse SOCI index layer %d: %v", i, err)
		}
		switch d.MediaType {
		case MediaTypeZtoc:
			l, err := parseIndexLayer(d)
			if err != nil {
				return nil, fmt.Errorf("ztoc: parse SOCI index layer %d: %w", i, err)
			}
			ix.Layers = append(ix.Layers, l)
		case MediaTypeSociPrefetch:
			ix.Prefetch = append(ix.Prefetch, d)
		default:
			return nil, malformed("ztoc: parse SOCI index layer %d: media type %q", i, d.MediaType)
		}
	}
	if err := ix.validate(); err != nil {
		return nil, fmt.Errorf("ztoc: parse SOCI index: %w", err)
	}
	return ix, nil
}

// parseIndexLayer turns a zTOC descriptor into an IndexLayer.
func parseIndexLayer(d ocispec.Descriptor) (IndexLayer, error) {
	l := IndexLayer{ZtocDigest: d.Digest, ZtocSize: d.Size}
	a := maps.Clone(d.Annotations)
	take := func(k string) (string, bool) {
		v, ok := a[k]
		delete(a, k)
		return v, ok
	}
	v, ok := take(AnnotationImageLayerDigest)
	if !ok {
		return IndexLayer{}, malformed("missing %s annotation", AnnotationImageLayerDigest)
	}
	l.LayerDigest = digest.Digest(v)
	l.LayerMediaType, _ = take(AnnotationImageLayerMediaType)
	var err error
	if v, ok := take(AnnotationSpanSize); ok {
		if l.SpanSize, err = strconv.ParseInt(v, 10, 64); err != nil || l.SpanSize <= 0 {
			return IndexLayer{}, malformed("span size %q", v)
		}
	}
	if v, ok := take(AnnotationDisableXattrs); ok {
		if l.DisableXattrs, err = strconv.ParseBool(v); err != nil {
			return IndexLayer{}, malformed("%s %q", AnnotationDisableXattrs, v)
		}
	}
	if v, ok := take(AnnotationDiffID); ok {
		if l.DiffID = digest.Digest(v); v == "" {
			return IndexLayer{}, malformed("empty %s", AnnotationDiffID)
		}
	}
	if v, ok := take(AnnotationUncompressedSize); ok {
		if l.UncompressedSize, err = strconv.ParseInt(v, 10, 64); err != nil || l.UncompressedSize <= 0 {
			return IndexLayer{}, malformed("%s %q", AnnotationUncompressedSize, v)
		}
	}
	if len(a) > 0 {
		l.Annotations = a
	}
	if err := l.validate(); err != nil {
		return IndexLayer{}, err
	}
	return l, nil
}

// IndexDigestFromManifestAnnotations returns the v2 SOCI index digest an
// image manifest names in its com.amazon.soci.index-digest annotation;
// ok is false when it has none.
func IndexDigestFromManifestAnnotations(manifest []byte) (d digest.Digest, ok bool, err error) {
	var m struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		return "", false, malformed("ztoc: parse image manifest: %v", err)
	}
	v, ok := m.Annotations[AnnotationSociIndexDigest]
	if !ok {
		return "", false, nil
	}
	d, err = digest.Parse(v)
	if err != nil {
		return "", false, malformed("ztoc: image manifest annotation %s %q: %v", AnnotationSociIndexDigest, v, err)
	}
	return d, true, nil
}

// ReferrersTag returns the tag of the OCI referrers tag schema for
// manifest d: "<algorithm>-<encoded digest>" (each part cut to 32 and 64
// characters as the distribution spec says).
func ReferrersTag(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("ztoc: referrers tag for %q: %w", d, err)
	}
	alg, enc := string(d.Algorithm()), d.Encoded()
	return alg[:min(len(alg), 32)] + "-" + enc[:min(len(enc), 64)], nil
}

// BuildReferrersIndex returns an OCI image index listing referrers, as the
// referrers API returns it and the referrers tag holds it. Each descriptor
// should carry its artifact type and annotations (see ReferrerDescriptor).
func BuildReferrersIndex(referrers []ocispec.Descriptor) ([]byte, error) {
	for i, d := range referrers {
		if err := validateDescriptor(d); err != nil {
			return nil, malformed("ztoc: build referrers index: descriptor %d: %v", i, err)
		}
	}
	idx := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: referrers,
	}
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return nil, fmt.Errorf("ztoc: build referrers index: %w", err)
	}
	return b, nil
}

// ParseReferrers parses an OCI image index (a referrers API response, a
// referrers tag, or the image index `soci convert` writes) and returns its
// descriptors, each validated. Documents larger than Limits.MaxIndexSize
// are refused (ErrLimit and ErrMalformed; opts select the limits).
func ParseReferrers(b []byte, opts ...Option) ([]ocispec.Descriptor, error) {
	lim := applyOptions(opts)
	if len(b) > lim.MaxIndexSize {
		return nil, overLimit(true, "ztoc: parse image index: %d bytes exceed the %d-byte limit", len(b), lim.MaxIndexSize)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, malformed("ztoc: parse image index: %v", err)
	}
	switch idx.MediaType {
	case ocispec.MediaTypeImageIndex, mediaTypeDockerManifestList, "":
	default:
		return nil, malformed("ztoc: parse image index: media type %q", idx.MediaType)
	}
	if idx.SchemaVersion != 2 {
		return nil, malformed("ztoc: parse image index: schema version %d", idx.SchemaVersion)
	}
	for i, d := range idx.Manifests {
		if err := validateDescriptor(d); err != nil {
			return nil, malformed("ztoc: parse image index: descriptor %d: %v", i, err)
		}
	}
	return idx.Manifests, nil
}

// SelectSociV1Indexes returns, in order, the referrers that are v1 SOCI
// indexes (SOCI itself uses the first).
func SelectSociV1Indexes(referrers []ocispec.Descriptor) []ocispec.Descriptor {
	var out []ocispec.Descriptor
	for _, d := range referrers {
		if d.ArtifactType == MediaTypeSociIndexV1 {
			out = append(out, d)
		}
	}
	return out
}

// SelectSociV2Index returns the v2 SOCI index descriptor that an image
// index (from ParseReferrers) lists for image manifest manifestDigest.
func SelectSociV2Index(manifests []ocispec.Descriptor, manifestDigest digest.Digest) (ocispec.Descriptor, bool) {
	for _, d := range manifests {
		if d.ArtifactType == MediaTypeSociIndexV2 && d.Annotations[AnnotationImageManifestDigest] == manifestDigest.String() {
			return d, true
		}
	}
	return ocispec.Descriptor{}, false
}
