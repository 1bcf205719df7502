package ztoc

import (
	"time"

	digest "github.com/opencontainers/go-digest"
)

// Version is the zTOC format version written by this package (SOCI's
// flatbuffers schema "0.9").
const Version = "0.9"

// BuildToolIdentifier is written into every zTOC and SOCI index built here.
const BuildToolIdentifier = "lazypull ztoc v1"

// DefaultSpanSize is the default number of uncompressed bytes between two
// checkpoints (4 MiB, as SOCI).
const DefaultSpanSize int64 = 1 << 22

// WindowSize is the size of the inflate history stored with each checkpoint.
const WindowSize = 1 << 15

// SpanID identifies a span of a layer: span i covers the uncompressed bytes
// between checkpoint i and checkpoint i+1.
type SpanID int32

// CompressionAlgorithm is the compression of the indexed layer. The values are
// those of SOCI's flatbuffers enum.
type CompressionAlgorithm uint8

// Compression algorithms (wire values).
const (
	Gzip         CompressionAlgorithm = 1
	Uncompressed CompressionAlgorithm = 2
)

func (c CompressionAlgorithm) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Uncompressed:
		return "uncompressed"
	default:
		return "unknown"
	}
}

// Entry types as spelled in the zTOC's FileMetadata.type field.
const (
	TypeReg      = "reg"
	TypeDir      = "dir"
	TypeSymlink  = "symlink"
	TypeHardlink = "hardlink"
	TypeChar     = "char"
	TypeBlock    = "block"
	TypeFifo     = "fifo"
)

// FileMetadata is one tar entry of the layer, as stored in the zTOC.
type FileMetadata struct {
	// Name is the entry name exactly as in the tar stream (e.g. "./usr/bin/").
	Name string
	// Type is one of the Type* constants.
	Type string
	// UncompressedOffset is the offset of the entry's data in the tar stream.
	UncompressedOffset int64
	// UncompressedSize is the size of the entry's data (0 for non-regular files).
	UncompressedSize int64
	// Linkname is the target of a symlink or hard link.
	Linkname string
	// Mode holds permission and special bits (tar header mode, e.g. 04755).
	Mode     int64
	UID, GID uint32
	Uname    string
	Gname    string
	// ModTime is the modification time (stored as RFC 3339 text).
	ModTime            time.Time
	Devmajor, Devminor int64
	// PAXRecords holds every PAX record of the entry (the wire field is named
	// "xattrs"; extended attributes appear as "SCHILY.xattr.<name>" keys).
	PAXRecords map[string]string
}

// Xattrs returns the extended attributes carried in the entry's PAX records
// ("SCHILY.xattr.<name>" keys), or nil.
func (m *FileMetadata) Xattrs() map[string]string {
	var x map[string]string
	for k, v := range m.PAXRecords {
		const prefix = "SCHILY.xattr."
		if len(k) > len(prefix) && k[:len(prefix)] == prefix {
			if x == nil {
				x = make(map[string]string)
			}
			x[k[len(prefix):]] = v
		}
	}
	return x
}

// TOC is the table of contents: every entry of the tar stream in order.
type TOC struct {
	FileMetadata []FileMetadata
}

// CompressionInfo holds what is needed to inflate spans of the layer.
type CompressionInfo struct {
	Algorithm CompressionAlgorithm
	// MaxSpanID is the number of spans minus one.
	MaxSpanID SpanID
	// SpanDigests holds the sha256 of each span's exact compressed byte range.
	SpanDigests []digest.Digest
	// Checkpoints is the raw checkpoint blob: the gzip checkpoint layout
	// (see checkpoints.go) or an encoded TarZinfo for uncompressed layers.
	Checkpoints []byte
}

// Ztoc is a decoded zTOC.
type Ztoc struct {
	Version                 string
	BuildToolIdentifier     string
	CompressedArchiveSize   int64
	UncompressedArchiveSize int64
	TOC                     TOC
	CompressionInfo         CompressionInfo
}
