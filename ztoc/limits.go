package ztoc

import (
	"fmt"
	"io"
	"math"
)

// Limits bounds everything this package accepts from outside: serialized
// zTOCs and checkpoint blobs (Decode, Unmarshal, OpenLayerIndex,
// NewLayerIndex), SOCI index manifests (ParseIndex, ParseReferrers), and the
// layers Build indexes. They keep a hostile input from making the package
// allocate or work far beyond what a genuine layer needs, and give every
// refusal a clear error wrapping ErrLimit.
//
// The zero value means the defaults; so does a zero (or negative) field.
// The defaults admit every layer SOCI's own builder indexes with its default
// span size, up to about 64 GiB of uncompressed tar stream and a million
// entries.
type Limits struct {
	// MaxZtocSize bounds a serialized zTOC in bytes (and the zTOC Build may
	// produce, checkpoint windows included). Default DefaultMaxZtocSize
	// (512 MiB); the flatbuffers format cannot exceed 2 GiB.
	MaxZtocSize int64
	// MaxEntries bounds the number of tar entries of one layer. Default
	// DefaultMaxEntries (1,048,576).
	MaxEntries int
	// MaxMetadataBytes bounds the memory a layer's decoded file table may
	// take, as estimated by this package (about 200 bytes per entry plus
	// its strings and PAX records). Default DefaultMaxMetadataBytes (512 MiB).
	MaxMetadataBytes int64
	// MaxNameLen bounds an entry's name and link name in bytes. Default
	// DefaultMaxNameLen (16 KiB: four times Linux's PATH_MAX).
	MaxNameLen int
	// MaxPAXRecords bounds the PAX records of one entry. Default
	// DefaultMaxPAXRecords (1024).
	MaxPAXRecords int
	// MaxPAXBytes bounds the keys and values of one entry's PAX records
	// together. Default DefaultMaxPAXBytes (1 MiB, what archive/tar reads of a
	// PAX header at most).
	MaxPAXBytes int
	// MaxXattrSize bounds one extended attribute value (a
	// "SCHILY.xattr.<name>" PAX record). Default DefaultMaxXattrSize (64 KiB,
	// Linux's XATTR_SIZE_MAX); names are bounded to 255 bytes
	// (XATTR_NAME_MAX) regardless.
	MaxXattrSize int
	// MaxSpans bounds the number of spans of one layer. Default
	// DefaultMaxSpans (1,048,576). Gzip zTOCs are bounded further by
	// MaxZtocSize (each checkpoint takes 32 KiB).
	MaxSpans int
	// MaxSpanSize bounds the compressed and the uncompressed length of one
	// span: inflated spans are held in memory whole. Default
	// DefaultMaxSpanSize (64 MiB). A layer whose deflate blocks are so long
	// that no checkpoint can be placed within it (a one-block "bomb") cannot
	// be indexed: Build fails with ErrLimit.
	MaxSpanSize int64
	// MaxRatio bounds the ratio of uncompressed to compressed bytes, of
	// every span and of the whole layer. Default DefaultMaxRatio (1032,
	// the most DEFLATE can reach: a 258-byte match in two bits); lower it
	// to refuse layers that expand that much.
	MaxRatio int64
	// MaxIndexSize bounds a SOCI index manifest or referrers list in bytes.
	// Default DefaultMaxIndexSize (4 MiB, the manifest limit of common
	// registries).
	MaxIndexSize int
}

// Defaults of Limits.
const (
	DefaultMaxZtocSize      int64 = 512 << 20
	DefaultMaxEntries             = 1 << 20
	DefaultMaxMetadataBytes int64 = 512 << 20
	DefaultMaxNameLen             = 16 << 10
	DefaultMaxPAXRecords          = 1024
	DefaultMaxPAXBytes            = 1 << 20
	DefaultMaxXattrSize           = 64 << 10
	DefaultMaxSpans               = 1 << 20
	DefaultMaxSpanSize      int64 = 64 << 20
	DefaultMaxRatio         int64 = DeflateMaxRatio
	DefaultMaxIndexSize           = 4 << 20
)

// Format ceilings: no Limits value can raise a limit past them.
const (
	// MaxZtocSize is the largest zTOC the flatbuffers format can address.
	MaxZtocSize = math.MaxInt32
	// DeflateMaxRatio is the largest possible ratio of output to input of
	// DEFLATE: a 258-byte match coded in two bits (one-bit length and
	// distance codes) gives 1032 bytes per input byte. Block headers only
	// lower it.
	DeflateMaxRatio = 1032
	// MaxXattrNameLen is Linux's XATTR_NAME_MAX.
	MaxXattrNameLen = 255
	// maxSpansFormat is the most spans a zTOC can number (int32 span ids).
	maxSpansFormat = math.MaxInt32
	// maxMetadataStringLen bounds the other strings of an entry (type, user
	// and group names, mod time) and PAX record keys.
	maxMetadataStringLen = 4 << 10
)

// DefaultLimits returns the default limits with every field set.
func DefaultLimits() Limits { return Limits{}.withDefaults() }

// WithDefaults returns l with every unset field set to its default and every
// field capped at the format's ceiling (what this package applies). Other
// format packages (estargz, zstdchunked) bound their input with the same
// limits.
func (l Limits) WithDefaults() Limits { return l.withDefaults() }

// CheckEntry checks one entry's strings and PAX records against l (defaults
// filled in): name and link lengths, PAX record count and size, xattr names
// and values. The error names the problem, not the entry.
func (l Limits) CheckEntry(m *FileMetadata) error {
	l = l.withDefaults()
	return l.checkEntry(m)
}

// withDefaults returns l with every unset field set to its default and
// every field capped at the format's ceiling.
func (l Limits) withDefaults() Limits {
	def64 := func(v *int64, d, ceiling int64) {
		if *v <= 0 {
			*v = d
		}
		*v = min(*v, ceiling)
	}
	def := func(v *int, d, ceiling int) {
		if *v <= 0 {
			*v = d
		}
		*v = min(*v, ceiling)
	}
	def64(&l.MaxZtocSize, DefaultMaxZtocSize, MaxZtocSize)
	def(&l.MaxEntries, DefaultMaxEntries, math.MaxInt32)
	def64(&l.MaxMetadataBytes, DefaultMaxMetadataBytes, math.MaxInt64)
	def(&l.MaxNameLen, DefaultMaxNameLen, math.MaxInt32)
	def(&l.MaxPAXRecords, DefaultMaxPAXRecords, math.MaxInt32)
	def(&l.MaxPAXBytes, DefaultMaxPAXBytes, math.MaxInt32)
	def(&l.MaxXattrSize, DefaultMaxXattrSize, math.MaxInt32)
	def(&l.MaxSpans, DefaultMaxSpans, maxSpansFormat)
	def64(&l.MaxSpanSize, DefaultMaxSpanSize, math.MaxInt64/DeflateMaxRatio)
	def64(&l.MaxRatio, DefaultMaxRatio, DeflateMaxRatio)
	def(&l.MaxIndexSize, DefaultMaxIndexSize, math.MaxInt32)
	return l
}

// Option configures the decoding and opening functions of this package.
type Option func(*options)

type options struct {
	limits  Limits
	windows io.ReaderAt // WithWindows
}

// WithLimits applies l instead of the default limits.
func WithLimits(l Limits) Option {
	return func(o *options) { o.limits = l }
}

// applyOptions returns the limits selected by opts, defaults filled in.
func applyOptions(opts []Option) Limits { return allOptions(opts).limits }

// allOptions returns every option, defaults filled in.
func allOptions(opts []Option) options {
	var o options
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	o.limits = o.limits.withDefaults()
	return o
}

// overLimit returns an error for input beyond a limit. It wraps ErrLimit and
// also ErrMalformed when malformedToo is set (decoding: the zTOC as a whole
// is unusable).
func overLimit(malformedToo bool, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if malformedToo {
		return fmt.Errorf("%s: %w (%w)", msg, ErrLimit, ErrMalformed)
	}
	return fmt.Errorf("%s: %w", msg, ErrLimit)
}

// maxHeaderRun bounds the tar header blocks in front of one entry's data
// (see LayerIndex.HeaderRange): a PAX header (records of at most
// MaxPAXBytes, each with a length prefix and separators), GNU long name
// and long link headers (MaxNameLen each), and a few 512-byte headers.
// Checking an entry never reads more.
func (l *Limits) maxHeaderRun() int64 {
	return alignTarBlock(int64(l.MaxPAXBytes)+32*int64(l.MaxPAXRecords)) + 2*alignTarBlock(int64(l.MaxNameLen)+1) + 8*blockSize
}

// entryCost estimates the memory one decoded entry takes: the FileMetadata
// struct, its strings, and its PAX map.
func entryCost(m *FileMetadata) int64 {
	n := int64(200 + len(m.Name) + len(m.Linkname) + len(m.Uname) + len(m.Gname) + len(m.Type))
	for k, v := range m.PAXRecords {
		n += int64(64 + len(k) + len(v))
	}
	return n
}

// checkEntry checks one entry's strings and PAX records against l.
// The error names the problem; callers add which entry it is.
func (l *Limits) checkEntry(m *FileMetadata) error {
	switch {
	case len(m.Name) > l.MaxNameLen:
		return fmt.Errorf("name of %d bytes exceeds the %d-byte limit", len(m.Name), l.MaxNameLen)
	case len(m.Linkname) > l.MaxNameLen:
		return fmt.Errorf("link name of %d bytes exceeds the %d-byte limit", len(m.Linkname), l.MaxNameLen)
	case len(m.Uname) > maxMetadataStringLen || len(m.Gname) > maxMetadataStringLen:
		return fmt.Errorf("user/group name of %d/%d bytes exceeds the %d-byte limit", len(m.Uname), len(m.Gname), maxMetadataStringLen)
	case len(m.PAXRecords) > l.MaxPAXRecords:
		return fmt.Errorf("%d PAX records exceed the limit of %d", len(m.PAXRecords), l.MaxPAXRecords)
	}
	total := 0
	for k, v := range m.PAXRecords {
		total += len(k) + len(v)
		if len(k) > maxMetadataStringLen {
			return fmt.Errorf("PAX record key of %d bytes exceeds the %d-byte limit", len(k), maxMetadataStringLen)
		}
		if name, ok := xattrName(k); ok {
			if len(name) > MaxXattrNameLen {
				return fmt.Errorf("xattr name of %d bytes exceeds the %d-byte limit", len(name), MaxXattrNameLen)
			}
			if len(v) > l.MaxXattrSize {
				return fmt.Errorf("xattr %q of %d bytes exceeds the %d-byte limit", name, len(v), l.MaxXattrSize)
			}
		}
	}
	if total > l.MaxPAXBytes {
		return fmt.Errorf("PAX records of %d bytes exceed the %d-byte limit", total, l.MaxPAXBytes)
	}
	return nil
}

// xattrName returns the extended attribute a PAX record key names.
func xattrName(key string) (string, bool) {
	const prefix = "SCHILY.xattr."
	if len(key) > len(prefix) && key[:len(prefix)] == prefix {
		return key[len(prefix):], true
	}
	return "", false
}
