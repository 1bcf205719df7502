package flate

import "errors"

var (
	// ErrCorrupt is returned when the input is not valid deflate or gzip:
	// bad gzip header, reserved block type, invalid Huffman code lengths,
	// stored-block length mismatch, invalid symbol, distance too far back, or
	// garbage after a gzip member. Package ztoc maps it to ErrCorruptStream.
	ErrCorrupt = errors.New("flate: corrupt compressed stream")
	// ErrChecksum is returned when a gzip member's CRC-32, ISIZE or header
	// CRC-16 does not match. Package ztoc maps it to its ErrChecksum.
	ErrChecksum = errors.New("flate: gzip checksum mismatch")
	// ErrTruncated is returned when the input ends before the stream does
	// (and more output was asked for). Package ztoc maps it to its
	// ErrTruncated.
	ErrTruncated = errors.New("flate: truncated compressed stream")
	// ErrCheckpoint is returned by ResumeGzip and ResumeRaw for checkpoint
	// arguments that cannot describe a position in a stream (Bits > 7,
	// negative offsets). Package ztoc would map it to ErrMalformed.
	ErrCheckpoint = errors.New("flate: invalid checkpoint")
)
