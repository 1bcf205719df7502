package storagedriver

import (
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore"
)

// LayerIdentity is how a layer of a pulled image is identified in the
// store: by its DiffID (verified content, the ordinary chain ID) or by a
// (pseudo) TOC digest (content served lazily and not verified at pull time).
type LayerIdentity struct {
	// DiffID identifies a layer whose uncompressed content was verified.
	DiffID digest.Digest
	// TOCDigest identifies a layer by TOC digest; for lazily served gzip
	// layers it is the compressed blob digest (a pseudo TOC). When set, it
	// takes precedence over DiffID, as in containers/image.
	TOCDigest digest.Digest
}

// ByTOC reports whether the layer is identified by TOC digest.
func (li LayerIdentity) ByTOC() bool { return li.TOCDigest != "" }

// LayerID returns the layer ("chain") ID containers/image v5.36 gives a
// layer with identity li on top of the layer parentID ("" for a base
// layer): the DiffID for a verified base layer, sha256(parent + "+" +
// DiffID) above it, and sha256(parent + "+@TOC=" + toc) for a layer
// identified by TOC digest. "@" never starts an encoded digest, so the two
// namespaces cannot collide.
func LayerID(parentID string, li LayerIdentity) string {
	var component string
	if li.ByTOC() {
		component = "@TOC=" + encoded(li.TOCDigest)
	} else {
		component = encoded(li.DiffID)
		if parentID == "" {
			return component
		}
	}
	return digest.Canonical.FromString(parentID + "+" + component).Encoded()
}

// encoded is d.Encoded() without its panic on a malformed digest (callers
// pass validated digests; this keeps a mistake from crashing the host).
func encoded(d digest.Digest) string {
	if _, hex, ok := strings.Cut(string(d), ":"); ok {
		return hex
	}
	return string(d)
}

// ImageID returns the ID of an image with config digest configDigest whose
// layers have the identities ids: the config digest when every layer is
// verified (as containers/image gives it), otherwise a digest over the TOC
// digests, so that an image with unverified layers never takes the ID of
// the verified image (and the other way round). Unlike containers/image
// v5.36, whose TOC image ID leaves the config out, the config digest is part
// of it: two images with the same layers and different configs (a retag
// with a new CMD or LABEL) must not share an ID, or the second pull
// overwrites the first image's manifest and config.
func ImageID(configDigest digest.Digest, ids []LayerIdentity) string {
	var b strings.Builder
	byTOC := false
	for _, li := range ids {
		if li.ByTOC() {
			byTOC = true
			b.WriteString(li.TOCDigest.String())
		}
		b.WriteString("|")
	}
	if !byTOC {
		return encoded(configDigest)
	}
	// A config is JSON; "@" keeps the input from ever being one.
	return digest.Canonical.FromString("@With TOC:" + b.String() + "@config:" + configDigest.String()).Encoded()
}

// TOCRef returns the image reference under which the layer store is asked
// for layers identified by pseudo TOC digest (see the package
// documentation): the reference prefixed with layerstore.TOCRefPrefix.
func TOCRef(ref string) string { return layerstore.TOCRefPrefix + ref }
