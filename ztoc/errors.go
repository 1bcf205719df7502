package ztoc

import "errors"

var (
	// ErrUnsupportedCompression is returned for layers that cannot be indexed
	// for random access (zstd, or an unknown format).
	ErrUnsupportedCompression = errors.New("ztoc: unsupported layer compression")
	// ErrCorruptStream is returned when the compressed layer is not valid
	// gzip/deflate (bad header, bad Huffman code, distance too far back, ...).
	ErrCorruptStream = errors.New("ztoc: corrupt compressed stream")
	// ErrChecksum is returned when a gzip member's CRC32 or ISIZE does not
	// match the data.
	ErrChecksum = errors.New("ztoc: gzip checksum mismatch")
	// ErrTruncated is returned when the compressed stream or a fetched range
	// ends early.
	ErrTruncated = errors.New("ztoc: truncated data")
	// ErrInvalidEntry is returned for tar entries the index refuses to describe
	// (paths escaping the root, negative or absurd sizes, sparse files,
	// offsets past the end of the layer).
	ErrInvalidEntry = errors.New("ztoc: invalid tar entry")
	// ErrMalformed is returned when a serialized zTOC, checkpoint blob or SOCI
	// index cannot be decoded or is internally inconsistent.
	ErrMalformed = errors.New("ztoc: malformed index data")
	// ErrSpanDigest is returned when fetched span bytes do not match the
	// span digest recorded in the zTOC.
	ErrSpanDigest = errors.New("ztoc: span digest mismatch")
	// ErrHeaderMismatch is returned when the tar headers in front of an
	// entry's data do not describe the zTOC entry (name, type, size, mode,
	// owner, link, PAX records or offsets differ).
	ErrHeaderMismatch = errors.New("ztoc: tar header does not match the index")
	// ErrNotExist is returned when a path is not in the zTOC.
	ErrNotExist = errors.New("ztoc: no such file in layer")
	// ErrLimit is returned when input from outside exceeds a bound of
	// Limits (zTOC or index size, entries, name lengths, PAX records, span
	// length, inflate ratio, ...). Decoding errors wrap ErrMalformed too.
	ErrLimit = errors.New("ztoc: input exceeds a limit")
	// ErrVerify is returned by LayerIndex.Verify when the layer is not the
	// one the zTOC describes (blob digest or size, DiffID, a checkpoint, a
	// span digest, or a tar entry differs). The error names the first
	// difference.
	ErrVerify = errors.New("ztoc: the zTOC does not describe the layer")
)
