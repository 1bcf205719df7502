package tocindex

import (
	"errors"
	"io"
)

// Errors of this package.
var (
	// ErrMalformed is returned by Build for a TOC that cannot describe a
	// layer: chunks outside the blob or overlapping, files whose chunks do
	// not cover them, entries over the limits.
	ErrMalformed = errors.New("tocindex: malformed table of contents")
	// ErrCorrupt is returned by Verify and Inflate when a span's compressed
	// bytes are not what the TOC describes: not the format's structure, not
	// decompressible, or a chunk whose sha256 differs from the TOC's.
	ErrCorrupt = errors.New("tocindex: span does not match the table of contents")
	// ErrVerify is returned by VerifyLayer when the blob is not the layer
	// the TOC and the image describe. The error names the first difference.
	ErrVerify = errors.New("tocindex: the layer does not match its table of contents")
)

// Codec decompresses the regions of one format. A region is a run of whole
// gzip members or zstd frames (skippable frames included) between two
// boundaries the TOC gives. Implementations must be safe for concurrent use
// and bound the memory hostile input can make them use.
type Codec interface {
	// Name names the compression ("gzip", "zstd").
	Name() string
	// CheckRegion is the cheap check of a fetched region's compressed bytes
	// (magic numbers, frame structure), done on every fetch before the
	// bytes are cached. An error means they cannot be the region.
	CheckRegion(b []byte) error
	// DecodePrefix fills dst with the first len(dst) bytes region b
	// decompresses to.
	DecodePrefix(b, dst []byte) error
	// DecodeAll writes everything region b decompresses to to w, and fails
	// unless b is exactly a whole number of members or frames.
	DecodeAll(b []byte, w io.Writer) error
}
