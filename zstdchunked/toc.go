package zstdchunked

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/ztoc"
)

// Annotations of a zstd:chunked layer descriptor (containers/storage
// pkg/chunked/internal/minimal).
const (
	// AnnotationTOCDigest is the sha256 of the TOC frame's compressed
	// bytes: the layer's TOC digest.
	AnnotationTOCDigest = "io.github.containers.zstd-chunked.manifest-checksum"
	// AnnotationTOCPosition is "offset:length:uncompressed length:type" of
	// the compressed TOC (after its skippable frame header); type 1.
	AnnotationTOCPosition = "io.github.containers.zstd-chunked.manifest-position"
	// AnnotationTarSplitPosition is "offset:length:uncompressed length" of
	// the compressed tar-split.
	AnnotationTarSplitPosition = "io.github.containers.zstd-chunked.tarsplit-position"
)

// Footer layout: the blob ends with a skippable frame of FooterDataSize
// bytes: seven little-endian uint64 (TOC offset, compressed and
// uncompressed length, type; tar-split offset, compressed and uncompressed
// length) and the 8-byte magic "GNUlInUx".
const (
	FooterDataSize = 64
	// FooterSize is the footer frame with its skippable frame header.
	FooterSize   = skippableHdrSize + FooterDataSize
	manifestType = 1
	footerMagic  = "GNUlInUx"
)

// MediaType is the media type of zstd-compressed OCI layers.
const MediaType = "application/vnd.oci.image.layer.v1.tar+zstd"

// ErrFormat is returned for a blob or annotations that are not valid
// zstd:chunked; ErrTOCDigest when the TOC does not match the digest the
// image gives.
var (
	ErrFormat    = errors.New("zstdchunked: not a valid zstd:chunked layer")
	ErrTOCDigest = errors.New("zstdchunked: TOC does not match its digest")
)

// position is a compressed piece of metadata in the blob.
type position struct {
	offset, length, ulength int64
}

func (p position) end() int64 { return p.offset + p.length }

// Location says where the metadata of a blob is.
type Location struct {
	TOC, TarSplit position
	// HasTarSplit is false for blobs written before containers/storage
	// recorded a tar-split (or without one).
	HasTarSplit bool
}

// TailOffset is where the metadata starts: the TOC's skippable frame
// header. Fetch the blob from there to its end for Open.
func (l Location) TailOffset() int64 { return l.TOC.offset - skippableHdrSize }

// Locate reads the metadata's location from the layer's annotations. ok is
// false when they do not give it (then read the footer, FooterSize bytes at
// the blob's end, with LocateFooter).
func Locate(annotations map[string]string, blobSize int64) (loc Location, ok bool, err error) {
	v, found := annotations[AnnotationTOCPosition]
	if !found {
		return Location{}, false, nil
	}
	f, err := parseInts(v, 4)
	if err != nil {
		return Location{}, false, fmt.Errorf("%w: %s %q: %w", ErrFormat, AnnotationTOCPosition, v, err)
	}
	if f[3] != manifestType {
		return Location{}, false, fmt.Errorf("%w: TOC of type %d", ErrFormat, f[3])
	}
	loc.TOC = position{f[0], f[1], f[2]}
	if v, found := annotations[AnnotationTarSplitPosition]; found {
		f, err := parseInts(v, 3)
		if err != nil {
			return Location{}, false, fmt.Errorf("%w: %s %q: %w", ErrFormat, AnnotationTarSplitPosition, v, err)
		}
		loc.TarSplit, loc.HasTarSplit = position{f[0], f[1], f[2]}, true
	}
	if err := loc.check(blobSize); err != nil {
		return Location{}, false, err
	}
	return loc, true, nil
}

// LocateFooter reads the location from the blob's last FooterSize bytes.
func LocateFooter(footer []byte, blobSize int64) (Location, error) {
	if len(footer) != FooterSize {
		return Location{}, fmt.Errorf("%w: footer of %d bytes", ErrFormat, len(footer))
	}
	f, err := NextFrame(footer)
	if err != nil || !f.Skippable || len(f.Data) != FooterDataSize || string(f.Data[56:]) != footerMagic {
		return Location{}, fmt.Errorf("%w: no zstd:chunked footer", ErrFormat)
	}
	var v [7]int64
	for i := range v {
		u := binary.LittleEndian.Uint64(f.Data[8*i:])
		if u > 1<<62 {
			return Location{}, fmt.Errorf("%w: footer field %d is %d", ErrFormat, i, u)
		}
		v[i] = int64(u)
	}
	if v[3] != manifestType {
		return Location{}, fmt.Errorf("%w: TOC of type %d", ErrFormat, v[3])
	}
	loc := Location{TOC: position{v[0], v[1], v[2]}, TarSplit: position{v[4], v[5], v[6]}, HasTarSplit: v[4] > 0}
	if err := loc.check(blobSize); err != nil {
		return Location{}, err
	}
	return loc, nil
}

// check checks the layout containers/storage writes: TOC frame, tar-split
// frame, footer frame, back to back at the blob's end.
func (l Location) check(blobSize int64) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
	}
	if l.TOC.offset < skippableHdrSize || l.TOC.length <= 0 || l.TOC.ulength <= 0 {
		return bad("TOC at %d, %d bytes (%d uncompressed)", l.TOC.offset, l.TOC.length, l.TOC.ulength)
	}
	next := l.TOC.end()
	if l.HasTarSplit {
		if l.TarSplit.offset != next+skippableHdrSize || l.TarSplit.length < 0 || l.TarSplit.ulength < 0 {
			return bad("tar-split at %d (%d bytes) does not follow the TOC ending at %d", l.TarSplit.offset, l.TarSplit.length, next)
		}
		next = l.TarSplit.end()
	}
	if next+FooterSize != blobSize {
		return bad("metadata ends at %d, the footer at %d of a %d-byte blob", next, blobSize-FooterSize, blobSize)
	}
	return nil
}

// Options bound what Open accepts.
type Options struct {
	// Limits: MaxZtocSize bounds the TOC and the tar-split (compressed and
	// uncompressed), the rest as in tocindex.Build.
	Limits ztoc.Limits
	// SpanTarget is tocindex.Options.SpanTarget.
	SpanTarget int64
}

// Layer is an opened zstd:chunked layer.
type Layer struct {
	*tocindex.Index
	// TOCDigest is the digest the TOC was checked against.
	TOCDigest digest.Digest
	// TarSize is the length of the layer's tar stream (from the tar-split),
	// -1 when unknown.
	TarSize int64
}

// tocJSON is the TOC as containers/storage writes it (minimal.TOC).
type tocJSON struct {
	Version        int           `json:"version"`
	Entries        []tocEntry    `json:"entries"`
	TarSplitDigest digest.Digest `json:"tarSplitDigest,omitempty"`
}

type tocEntry struct {
	Type        string            `json:"type"`
	Name        string            `json:"name"`
	Linkname    string            `json:"linkName,omitempty"`
	Mode        int64             `json:"mode,omitempty"`
	Size        int64             `json:"size,omitempty"`
	UID         int64             `json:"uid,omitempty"`
	GID         int64             `json:"gid,omitempty"`
	ModTime     *time.Time        `json:"modtime,omitempty"`
	Devmajor    int64             `json:"devMajor,omitempty"`
	Devminor    int64             `json:"devMinor,omitempty"`
	Xattrs      map[string]string `json:"xattrs,omitempty"`
	Digest      digest.Digest     `json:"digest,omitempty"`
	Offset      int64             `json:"offset,omitempty"`
	EndOffset   int64             `json:"endOffset,omitempty"`
	ChunkSize   int64             `json:"chunkSize,omitempty"`
	ChunkOffset int64             `json:"chunkOffset,omitempty"`
	ChunkDigest digest.Digest     `json:"chunkDigest,omitempty"`
	ChunkType   string            `json:"chunkType,omitempty"`
}

// Open checks and decodes a zstd:chunked layer's metadata: tail holds the
// blob's bytes from loc.TailOffset() to its end. The TOC frame must match
// tocDigest (the layer's annotation), the tar-split the TOC's digest of it,
// the footer the location. Errors wrap ErrTOCDigest, ErrFormat or
// tocindex.ErrMalformed.
func Open(tail []byte, loc Location, blobSize int64, tocDigest digest.Digest, o Options) (*Layer, error) {
	lim := o.Limits.WithDefaults()
	tailOff := loc.TailOffset()
	if int64(len(tail)) != blobSize-tailOff {
		return nil, fmt.Errorf("%w: %d tail bytes, want %d", ErrFormat, len(tail), blobSize-tailOff)
	}
	if loc.TOC.length > lim.MaxZtocSize || loc.TOC.ulength > lim.MaxZtocSize || loc.TarSplit.length > lim.MaxZtocSize || loc.TarSplit.ulength > lim.MaxZtocSize {
		return nil, fmt.Errorf("%w: TOC of %d (%d) bytes, tar-split of %d (%d) (%w)", ErrFormat, loc.TOC.length, loc.TOC.ulength, loc.TarSplit.length, loc.TarSplit.ulength, ztoc.ErrLimit)
	}
	frame := func(p position, what string) ([]byte, error) {
		f, err := NextFrame(tail[p.offset-skippableHdrSize-tailOff:])
		if err != nil || !f.Skippable || int64(len(f.Data)) != p.length {
			return nil, fmt.Errorf("%w: the %s is not the skippable frame its position says", ErrFormat, what)
		}
		return f.Data, nil
	}
	compressedTOC, err := frame(loc.TOC, "TOC")
	if err != nil {
		return nil, err
	}
	if tocDigest.Validate() != nil || tocDigest.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("%w: TOC digest %q", ErrFormat, tocDigest)
	}
	if got := digest.FromBytes(compressedTOC); got != tocDigest {
		return nil, fmt.Errorf("%w: %s, the image says %s", ErrTOCDigest, got, tocDigest)
	}
	footerLoc, err := LocateFooter(tail[len(tail)-FooterSize:], blobSize)
	if err != nil {
		return nil, err
	}
	if footerLoc.TOC != loc.TOC || (loc.HasTarSplit && footerLoc.TarSplit != loc.TarSplit) {
		return nil, fmt.Errorf("%w: the footer and the annotations place the metadata differently", ErrFormat)
	}
	raw, err := decodeBounded(compressedTOC, loc.TOC.ulength)
	if err != nil {
		return nil, fmt.Errorf("%w: TOC: %w", ErrFormat, err)
	}
	var toc tocJSON
	if err := json.Unmarshal(raw, &toc); err != nil {
		return nil, fmt.Errorf("%w: TOC: %w", ErrFormat, err)
	}
	if toc.Version != 1 {
		return nil, fmt.Errorf("%w: TOC version %d", ErrFormat, toc.Version)
	}
	tarSize := int64(-1)
	if toc.TarSplitDigest != "" {
		if !loc.HasTarSplit {
			return nil, fmt.Errorf("%w: the TOC names a tar-split the blob has no position for", ErrFormat)
		}
		ts, err := frame(loc.TarSplit, "tar-split")
		if err != nil {
			return nil, err
		}
		if digest.FromBytes(ts) != toc.TarSplitDigest {
			return nil, fmt.Errorf("%w: the tar-split does not match the TOC's digest of it", ErrTOCDigest)
		}
		raw, err := decodeBounded(ts, loc.TarSplit.ulength)
		if err != nil {
			return nil, fmt.Errorf("%w: tar-split: %w", ErrFormat, err)
		}
		if tarSize, err = TarSplitSize(raw); err != nil {
			return nil, err
		}
	}
	l, err := convert(&toc, blobSize, lim)
	if err != nil {
		return nil, err
	}
	l.Tail, l.TailBytes = tailOff, tail
	l.Boundaries = append(l.Boundaries, tailOff, loc.TOC.end(), blobSize-FooterSize)
	x, err := tocindex.Build(*l, tocindex.Options{SpanTarget: o.SpanTarget, Limits: lim})
	if err != nil {
		return nil, err
	}
	return &Layer{Index: x, TOCDigest: tocDigest, TarSize: tarSize}, nil
}

// convert turns the TOC's entries into a file table and chunks.
func convert(toc *tocJSON, blobSize int64, lim ztoc.Limits) (*tocindex.Layer, error) {
	if len(toc.Entries) > 4*lim.MaxEntries {
		return nil, fmt.Errorf("%w: %d TOC entries (%w)", tocindex.ErrMalformed, len(toc.Entries), ztoc.ErrLimit)
	}
	l := &tocindex.Layer{Format: FormatName, BlobSize: blobSize, Codec: Codec{}}
	lastReg := -1
	for i := range toc.Entries {
		e := &toc.Entries[i]
		bad := func(format string, args ...any) (*tocindex.Layer, error) {
			return nil, fmt.Errorf("%w: TOC entry %d (%q): %s", tocindex.ErrMalformed, i, e.Name, fmt.Sprintf(format, args...))
		}
		if e.Type == "chunk" {
			if lastReg < 0 || l.Entries[lastReg].Name != e.Name && e.Name != "" {
				return bad("a chunk of no regular file")
			}
			if e.ChunkSize <= 0 {
				return bad("chunk of %d bytes", e.ChunkSize)
			}
			l.Chunks = append(l.Chunks, tocindex.Chunk{Entry: lastReg, FileOffset: e.ChunkOffset, Size: e.ChunkSize, Offset: e.Offset, Digest: e.ChunkDigest})
			continue
		}
		if e.UID < 0 || e.GID < 0 || e.UID > 1<<32-1 || e.GID > 1<<32-1 {
			return bad("owner %d:%d", e.UID, e.GID)
		}
		m := ztoc.FileMetadata{
			Name:     e.Name,
			Type:     e.Type,
			Linkname: e.Linkname,
			Mode:     e.Mode,
			UID:      uint32(e.UID),
			GID:      uint32(e.GID),
			Devmajor: e.Devmajor,
			Devminor: e.Devminor,
			ModTime:  tocindex.NormalizeTime(timeOrZero(e.ModTime), 0),
		}
		if len(e.Xattrs) > lim.MaxPAXRecords {
			return bad("%d xattrs", len(e.Xattrs))
		}
		for k, v := range e.Xattrs {
			val, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return bad("xattr %q: %v", k, err)
			}
			if m.PAXRecords == nil {
				m.PAXRecords = make(map[string]string, len(e.Xattrs))
			}
			m.PAXRecords["SCHILY.xattr."+k] = string(val)
		}
		idx := len(l.Entries)
		if e.Type == ztoc.TypeReg {
			m.UncompressedSize = e.Size
			lastReg = idx
			if e.Size > 0 {
				c := tocindex.Chunk{Entry: idx, FileOffset: e.ChunkOffset, Size: e.Size, Offset: e.Offset, Digest: e.Digest}
				if e.ChunkSize > 0 {
					c.Size, c.Digest = e.ChunkSize, e.ChunkDigest
				}
				l.Chunks = append(l.Chunks, c)
				if e.EndOffset <= e.Offset || e.EndOffset > blobSize {
					return bad("data frames at %d..%d", e.Offset, e.EndOffset)
				}
				l.Boundaries = append(l.Boundaries, e.EndOffset)
			}
		} else {
			lastReg = -1
		}
		l.Entries = append(l.Entries, m)
		if len(l.Entries) > lim.MaxEntries {
			return nil, fmt.Errorf("%w: more than %d entries (%w)", tocindex.ErrMalformed, lim.MaxEntries, ztoc.ErrLimit)
		}
	}
	return l, nil
}

func timeOrZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// decodeBounded decompresses b, which must decompress to exactly n bytes.
func decodeBounded(b []byte, n int64) ([]byte, error) {
	d, err := decodeAll()
	if err != nil {
		return nil, err
	}
	out, err := d.DecodeAll(b, make([]byte, 0, n))
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return nil, fmt.Errorf("decompresses to more than the %d bytes announced", n)
		}
		return nil, err
	}
	if int64(len(out)) != n {
		return nil, fmt.Errorf("decompresses to %d bytes, %d announced", len(out), n)
	}
	return out, nil
}

// tarSplitEntry is one line of a tar-split (vbatts/tar-split storage.Entry).
type tarSplitEntry struct {
	Type    int    `json:"type"`
	Size    int64  `json:"size,omitempty"`
	Payload []byte `json:"payload"`
}

// TarSplitSize returns the length of the tar stream a tar-split describes:
// its raw segments (headers, padding, the end) and its files' sizes.
func TarSplitSize(raw []byte) (int64, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	var size int64
	for {
		var e tarSplitEntry
		err := dec.Decode(&e)
		if err == io.EOF {
			return size, nil
		}
		if err != nil {
			return -1, fmt.Errorf("%w: tar-split: %w", ErrFormat, err)
		}
		switch e.Type {
		case 1: // file
			if e.Size < 0 {
				return -1, fmt.Errorf("%w: tar-split file of %d bytes", ErrFormat, e.Size)
			}
			size += e.Size
		case 2: // segment
			size += int64(len(e.Payload))
		default:
			return -1, fmt.Errorf("%w: tar-split entry of type %d", ErrFormat, e.Type)
		}
		if size < 0 || size > 1<<62 {
			return -1, fmt.Errorf("%w: tar-split describes %d bytes", ErrFormat, size)
		}
	}
}

func parseInts(s string, n int) ([]int64, error) {
	parts := strings.Split(s, ":")
	if len(parts) != n {
		return nil, fmt.Errorf("%d fields, want %d", len(parts), n)
	}
	out := make([]int64, n)
	for i, p := range parts {
		v, err := strconv.ParseInt(p, 10, 64)
		if err != nil || v < 0 || v > 1<<62 {
			return nil, fmt.Errorf("field %d: %q", i, p)
		}
		out[i] = v
	}
	return out, nil
}
