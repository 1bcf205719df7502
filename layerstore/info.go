package layerstore

import (
	"encoding/json"
	"fmt"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc"
)

// layerIdentity is how the host identifies a lazily served layer.
type layerIdentity int

const (
	// identityLegacy is what containers/storage 1.43 (podman 4.x) needs: the
	// layer keyed by compressed digest and DiffID, like a pulled layer.
	// Served layers are verified span by span and, once fetched completely,
	// as a whole (digest, DiffID, tar headers).
	identityLegacy layerIdentity = iota
	// identityTOC gives the layer an identity in a namespace of its own
	// (the compressed digest as a pseudo TOC digest, no compressed or
	// uncompressed digest), so containers/storage never de-duplicates an
	// ordinary pull onto content it has not verified. Used by the
	// storage_driver plugin.
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

// Compression values of containers/storage's pkg/archive.
const (
	archiveUncompressed = 0
	archiveGzip         = 2
)

// ExpectedLayerDiffIDFlag is the layer flag containers/image reads to push
// or save a layer identified by TOC digest.
const ExpectedLayerDiffIDFlag = "expected-layer-diffid"

func infoJSON(l *layer, id layerIdentity) ([]byte, error) {
	z := l.x.Ztoc()
	info := alsInfo{
		CompressedSize:   l.size,
		UncompressedSize: z.UncompressedArchiveSize,
		CompressionType:  archiveGzip,
	}
	if z.CompressionInfo.Algorithm == ztoc.Uncompressed {
		info.CompressionType = archiveUncompressed
	}
	switch id {
	case identityLegacy:
		info.CompressedDigest = l.digest
		info.UncompressedDigest = l.diffID
	case identityTOC:
		info.TOCDigest = l.digest
		info.Flags = map[string]any{ExpectedLayerDiffIDFlag: l.diffID.String()}
	default:
		return nil, fmt.Errorf("unknown layer identity %d", id)
	}
	return json.Marshal(info)
}
