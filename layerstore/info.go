package layerstore

import (
	"encoding/json"
	"fmt"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/estargz"
)

// layerIdentity is how the host identifies a lazily served layer.
type layerIdentity int

const (
	// identityLegacy is what containers/storage 1.43 (podman 4.x) needs: the
	// layer keyed by compressed digest and DiffID, like a pulled layer.
	// Served layers are verified span by span and, once fetched completely,
	// as a whole (digest, DiffID, tar headers).
	identityLegacy layerIdentity = iota
	// identityPseudoTOC gives the layer an identity in a namespace of its
	// own (the compressed digest as a pseudo TOC digest, no compressed or
	// uncompressed digest), so containers/storage never de-duplicates an
	// ordinary pull onto content it has not verified. Used by the
	// storage_driver plugin.
	identityPseudoTOC
	// identityTOC is what containers/storage >= 1.54 (podman >= 5.1) asks
	// for a layer whose manifest descriptor carries a TOC digest (eStargz,
	// zstd:chunked): the lookup path names that digest, and `info` must
	// report it as toc-digest (containers/image checks it), with the DiffID
	// only as the expected-layer-diffid flag (needed to push or save the
	// layer). Without a compressed or uncompressed digest, c/storage
	// records the layer by TOC digest only, the namespace its own partial
	// pulls use.
	identityTOC
)

// alsInfo is the `info` file: decoded by containers/storage into its Layer
// struct (json keys of that struct).
type alsInfo struct {
	CompressedDigest   digest.Digest  `json:"compressed-diff-digest,omitempty"`
	CompressedSize     int64          `json:"compressed-size,omitempty"`
	UncompressedDigest digest.Digest  `json:"diff-digest,omitempty"`
	TOCDigest          digest.Digest  `json:"toc-digest,omitempty"`
	UncompressedSize   int64          `json:"diff-size,omitempty"`
	CompressionType    int            `json:"compression,omitempty"`
	Flags              map[string]any `json:"flags,omitempty"`
}

// ExpectedLayerDiffIDFlag is the layer flag containers/image reads to push
// or save a layer identified by TOC digest.
const ExpectedLayerDiffIDFlag = "expected-layer-diffid"

// infoJSON is the `info` of layer l as the host identifies it. A layer
// identified by DiffID needs its exact tar size (c/storage takes it as the
// layer's size); one identified by TOC may leave it unknown (-1), as
// containers/storage's own partial pulls of eStargz do.
func infoJSON(l *layer, id layerIdentity) ([]byte, error) {
	info := alsInfo{
		CompressedSize:   l.size,
		UncompressedSize: l.idx.TarSize(),
		CompressionType:  l.idx.Compression(),
	}
	switch id {
	case identityLegacy:
		if info.UncompressedSize < 0 {
			return nil, fmt.Errorf("%w: the length of the %s layer's tar stream is unknown (no %s annotation), which a layer identified by DiffID needs", ErrNotServed, l.idx.Format(), estargzSizeAnnotation)
		}
		info.CompressedDigest = l.digest
		info.UncompressedDigest = l.diffID
	case identityPseudoTOC:
		info.TOCDigest = l.digest
		info.Flags = map[string]any{ExpectedLayerDiffIDFlag: l.diffID.String()}
	case identityTOC:
		if l.tocDigest == "" {
			return nil, fmt.Errorf("%w: the layer has no TOC", ErrNotServed)
		}
		info.TOCDigest = l.tocDigest
		info.Flags = map[string]any{ExpectedLayerDiffIDFlag: l.diffID.String()}
	default:
		return nil, fmt.Errorf("unknown layer identity %d", id)
	}
	return json.Marshal(info)
}

const estargzSizeAnnotation = estargz.AnnotationUncompressedSize
