package estargz

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/ztoc"
)

// Facts of the eStargz format (stargz-snapshotter docs/estargz.md).
const (
	// AnnotationTOCDigest is the layer annotation holding the sha256 of
	// the TOC JSON: the layer's TOC digest.
	AnnotationTOCDigest = "containerd.io/snapshot/stargz/toc.digest"
	// AnnotationUncompressedSize holds the length of the layer's tar
	// stream (what stargz-store needs to announce it).
	AnnotationUncompressedSize = "io.containers.estargz.uncompressed-size"
	// TOCName is the tar entry holding the TOC JSON, the last of the layer.
	TOCName = "stargz.index.json"
	// FooterSize is the length of the footer: an empty gzip member whose
	// extra field holds the TOC's offset.
	FooterSize = 51
	// PrefetchLandmark ends the prioritized files; NoPrefetchLandmark says
	// there are none.
	PrefetchLandmark   = ".prefetch.landmark"
	NoPrefetchLandmark = ".no.prefetch.landmark"
	// FormatName names the format in file tables, logs and status.
	FormatName = "estargz"
)

// Errors of this package.
var (
	// ErrFormat is returned for a blob that is not a valid eStargz layer.
	ErrFormat = errors.New("estargz: not a valid eStargz layer")
	// ErrTOCDigest is returned when the TOC does not match the digest the
	// image gives.
	ErrTOCDigest = errors.New("estargz: TOC does not match its digest")
)

// ParseFooter returns the TOC's offset from the blob's last FooterSize
// bytes: a gzip header with FEXTRA, the extra subfield 'S','G' of 22 bytes
// "%016xSTARGZ", an empty stored block and a zero trailer.
func ParseFooter(footer []byte, blobSize int64) (int64, error) {
	bad := func(what string) (int64, error) {
		return 0, fmt.Errorf("%w: footer: %s", ErrFormat, what)
	}
	if len(footer) != FooterSize {
		return bad(fmt.Sprintf("%d bytes", len(footer)))
	}
	if footer[0] != 0x1f || footer[1] != 0x8b || footer[2] != 8 || footer[3]&0x04 == 0 {
		return bad("not a gzip header with an extra field")
	}
	if footer[10] != 26 || footer[11] != 0 || footer[12] != 'S' || footer[13] != 'G' || footer[14] != 22 || footer[15] != 0 {
		return bad("no eStargz extra field")
	}
	if string(footer[32:38]) != "STARGZ" {
		return bad("no STARGZ magic")
	}
	if !bytes.Equal(footer[38:], []byte{1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0}) {
		return bad("not an empty member")
	}
	off, err := strconv.ParseInt(string(footer[16:32]), 16, 64)
	if err != nil || off <= 0 || off >= blobSize-FooterSize {
		return bad(fmt.Sprintf("TOC offset %q in a %d-byte blob", footer[16:32], blobSize))
	}
	return off, nil
}

// Options bound what Open accepts.
type Options struct {
	// Limits: MaxZtocSize bounds the TOC (compressed and uncompressed), the
	// rest as in tocindex.Build.
	Limits ztoc.Limits
	// SpanTarget is tocindex.Options.SpanTarget.
	SpanTarget int64
}

// Layer is an opened eStargz layer.
type Layer struct {
	*tocindex.Index
	// TOCDigest is the digest the TOC was checked against.
	TOCDigest digest.Digest
	// TOCOffset is where the TOC's gzip member starts.
	TOCOffset int64
}

// tocJSON is the TOC (JTOC).
type tocJSON struct {
	Version int        `json:"version"`
	Entries []tocEntry `json:"entries"`
}

type tocEntry struct {
	Name        string            `json:"name"`
	Type        string            `json:"type"`
	Size        int64             `json:"size,omitempty"`
	ModTime     string            `json:"modtime,omitempty"`
	LinkName    string            `json:"linkName,omitempty"`
	Mode        int64             `json:"mode,omitempty"`
	UID         int64             `json:"uid,omitempty"`
	GID         int64             `json:"gid,omitempty"`
	Offset      int64             `json:"offset,omitempty"`
	InnerOffset int64             `json:"innerOffset,omitempty"`
	DevMajor    int64             `json:"devMajor,omitempty"`
	DevMinor    int64             `json:"devMinor,omitempty"`
	Xattrs      map[string][]byte `json:"xattrs,omitempty"`
	ChunkOffset int64             `json:"chunkOffset,omitempty"`
	ChunkSize   int64             `json:"chunkSize,omitempty"`
	ChunkDigest digest.Digest     `json:"chunkDigest,omitempty"`
}

// Open checks and decodes an eStargz layer's TOC: tail holds the blob's
// bytes from tocOffset (ParseFooter) to its end, the TOC's gzip member and
// the footer. The TOC JSON must match tocDigest (the layer's annotation).
// The file table includes the TOC's own tar entry (stargz.index.json), as an
// extraction of the layer does. Errors wrap ErrTOCDigest, ErrFormat or
// tocindex.ErrMalformed.
func Open(tail []byte, tocOffset, blobSize int64, tocDigest digest.Digest, o Options) (*Layer, error) {
	lim := o.Limits.WithDefaults()
	if int64(len(tail)) != blobSize-tocOffset || len(tail) <= FooterSize {
		return nil, fmt.Errorf("%w: %d tail bytes from %d of a %d-byte blob", ErrFormat, len(tail), tocOffset, blobSize)
	}
	if int64(len(tail)) > lim.MaxZtocSize {
		return nil, fmt.Errorf("%w: TOC of %d bytes (%w)", ErrFormat, len(tail), ztoc.ErrLimit)
	}
	if off, err := ParseFooter(tail[len(tail)-FooterSize:], blobSize); err != nil {
		return nil, err
	} else if off != tocOffset {
		return nil, fmt.Errorf("%w: the footer places the TOC at %d, not %d", ErrFormat, off, tocOffset)
	}
	if tocDigest.Validate() != nil || tocDigest.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("%w: TOC digest %q", ErrFormat, tocDigest)
	}
	member := tail[:len(tail)-FooterSize]
	hdr, inner, raw, err := readTOCMember(member, lim.MaxZtocSize)
	if err != nil {
		return nil, err
	}
	if got := digest.FromBytes(raw); got != tocDigest {
		return nil, fmt.Errorf("%w: %s, the image says %s", ErrTOCDigest, got, tocDigest)
	}
	var toc tocJSON
	if err := json.Unmarshal(raw, &toc); err != nil {
		return nil, fmt.Errorf("%w: TOC: %w", ErrFormat, err)
	}
	if toc.Version != 1 {
		return nil, fmt.Errorf("%w: TOC version %d", ErrFormat, toc.Version)
	}
	l, err := convert(&toc, blobSize, lim)
	if err != nil {
		return nil, err
	}
	// The TOC's own entry: served from the TOC member like a file.
	self, err := headerMetadata(hdr)
	if err != nil {
		return nil, fmt.Errorf("%w: the TOC's tar entry: %w", ErrFormat, err)
	}
	l.Entries = append(l.Entries, self)
	l.Chunks = append(l.Chunks, tocindex.Chunk{Entry: len(l.Entries) - 1, Size: int64(len(raw)), Offset: tocOffset, Inner: inner, Digest: tocDigest})
	l.Tail, l.TailBytes = tocOffset, tail
	l.Boundaries = append(l.Boundaries, tocOffset, blobSize-FooterSize)
	x, err := tocindex.Build(*l, tocindex.Options{SpanTarget: o.SpanTarget, Limits: lim})
	if err != nil {
		return nil, err
	}
	return &Layer{Index: x, TOCDigest: tocDigest, TOCOffset: tocOffset}, nil
}

// readTOCMember decompresses the TOC's gzip member, which must be exactly
// member: a tar entry stargz.index.json and the end of the tar stream. It
// returns the entry's header, the offset of its data in the member's output,
// and the JSON.
func readTOCMember(member []byte, maxSize int64) (*tar.Header, int64, []byte, error) {
	br := bytes.NewReader(member)
	zr, err := newGzipReader(br)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("%w: TOC member: %w", ErrFormat, err)
	}
	defer putGzipReader(zr)
	zr.Multistream(false)
	limited := &io.LimitedReader{R: zr, N: maxSize + 64<<10}
	cr := &countReader{r: limited}
	tr := tar.NewReader(cr)
	h, err := tr.Next()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("%w: TOC member: %w", ErrFormat, err)
	}
	if h.Name != TOCName || (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA) { //nolint:staticcheck // old archives
		return nil, 0, nil, fmt.Errorf("%w: the TOC member holds %q, not %s", ErrFormat, h.Name, TOCName)
	}
	if h.Size <= 0 || h.Size > maxSize {
		return nil, 0, nil, fmt.Errorf("%w: TOC of %d bytes (limit %d) (%w)", ErrFormat, h.Size, maxSize, ztoc.ErrLimit)
	}
	inner := cr.n
	raw := make([]byte, h.Size)
	if _, err := io.ReadFull(tr, raw); err != nil {
		return nil, 0, nil, fmt.Errorf("%w: TOC: %w", ErrFormat, err)
	}
	if _, err := tr.Next(); err != io.EOF {
		return nil, 0, nil, fmt.Errorf("%w: the TOC is not the last tar entry (%v)", ErrFormat, err)
	}
	// The rest of the member: the end of the tar stream.
	if _, err := io.Copy(io.Discard, limited); err != nil {
		return nil, 0, nil, fmt.Errorf("%w: TOC member: %w", ErrFormat, err)
	}
	if limited.N <= 0 || br.Len() != 0 {
		return nil, 0, nil, fmt.Errorf("%w: %d bytes between the TOC member and the footer", ErrFormat, br.Len())
	}
	return h, inner, raw, nil
}

// convert turns the TOC's entries into a file table and chunks.
func convert(toc *tocJSON, blobSize int64, lim ztoc.Limits) (*tocindex.Layer, error) {
	if len(toc.Entries) > 4*lim.MaxEntries {
		return nil, fmt.Errorf("%w: %d TOC entries (%w)", tocindex.ErrMalformed, len(toc.Entries), ztoc.ErrLimit)
	}
	l := &tocindex.Layer{Format: FormatName, BlobSize: blobSize, Codec: Codec{}, ModTimeRound: time.Second}
	lastReg := -1
	for i := range toc.Entries {
		e := &toc.Entries[i]
		bad := func(format string, args ...any) (*tocindex.Layer, error) {
			return nil, fmt.Errorf("%w: TOC entry %d (%q): %s", tocindex.ErrMalformed, i, e.Name, fmt.Sprintf(format, args...))
		}
		if e.Type == "chunk" {
			if lastReg < 0 {
				return bad("a chunk of no regular file")
			}
			size := e.ChunkSize
			if size == 0 { // the last chunk: to the end of the file
				size = l.Entries[lastReg].UncompressedSize - e.ChunkOffset
			}
			l.Chunks = append(l.Chunks, tocindex.Chunk{Entry: lastReg, FileOffset: e.ChunkOffset, Size: size, Offset: e.Offset, Inner: e.InnerOffset, Digest: e.ChunkDigest})
			continue
		}
		if e.UID < 0 || e.GID < 0 || e.UID > 1<<32-1 || e.GID > 1<<32-1 {
			return bad("owner %d:%d", e.UID, e.GID)
		}
		mtime := time.Time{}
		if e.ModTime != "" {
			t, err := time.Parse(time.RFC3339, e.ModTime)
			if err != nil {
				return bad("modification time %q", e.ModTime)
			}
			mtime = t
		}
		m := ztoc.FileMetadata{
			Name:     e.Name,
			Type:     e.Type,
			Linkname: e.LinkName,
			Mode:     e.Mode,
			UID:      uint32(e.UID),
			GID:      uint32(e.GID),
			Devmajor: e.DevMajor,
			Devminor: e.DevMinor,
			ModTime:  tocindex.NormalizeTime(mtime, 0),
		}
		if len(e.Xattrs) > lim.MaxPAXRecords {
			return bad("%d xattrs", len(e.Xattrs))
		}
		for k, v := range e.Xattrs {
			if m.PAXRecords == nil {
				m.PAXRecords = make(map[string]string, len(e.Xattrs))
			}
			m.PAXRecords["SCHILY.xattr."+k] = string(v)
		}
		idx := len(l.Entries)
		switch cleanName(e.Name) {
		case PrefetchLandmark:
			l.Prioritized = idx
		case NoPrefetchLandmark:
			l.Prioritized = 0
		}
		if e.Type == ztoc.TypeReg {
			m.UncompressedSize = e.Size
			lastReg = idx
			if e.Size > 0 {
				size := e.ChunkSize
				if size == 0 {
					size = e.Size - e.ChunkOffset
				}
				l.Chunks = append(l.Chunks, tocindex.Chunk{Entry: idx, FileOffset: e.ChunkOffset, Size: size, Offset: e.Offset, Inner: e.InnerOffset, Digest: e.ChunkDigest})
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

// headerMetadata describes a tar header as a file table entry.
func headerMetadata(h *tar.Header) (ztoc.FileMetadata, error) {
	typ, err := tocindex.TypeOf(h.Typeflag)
	if err != nil {
		return ztoc.FileMetadata{}, err
	}
	if h.Uid < 0 || h.Gid < 0 {
		return ztoc.FileMetadata{}, fmt.Errorf("owner %d:%d", h.Uid, h.Gid)
	}
	m := ztoc.FileMetadata{
		Name: h.Name, Type: typ, Linkname: h.Linkname, Mode: h.Mode,
		UID: uint32(h.Uid), GID: uint32(h.Gid), Devmajor: h.Devmajor, Devminor: h.Devminor,
		ModTime: tocindex.NormalizeTime(h.ModTime, time.Second),
	}
	if typ == ztoc.TypeReg {
		m.UncompressedSize = h.Size
	}
	for k, v := range h.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			if m.PAXRecords == nil {
				m.PAXRecords = map[string]string{}
			}
			m.PAXRecords[k] = v
		}
	}
	return m, nil
}

// cleanName is an entry name without "./", leading or trailing slashes.
func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
