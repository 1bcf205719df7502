package ztoc

// This file encodes and decodes the zTOC flatbuffer (SOCI schema "0.9",
// namespace ztoc, root table Ztoc). Encoding uses the flatbuffers runtime's
// Builder; decoding is hand-written and checks every offset, vtable, vector
// and string against the buffer, because the runtime's generated accessors
// trust their input and panic on malformed data.
//
// Vtable slots (field order of ztoc.fbs):
//
//	Ztoc:            0 version, 1 build_tool_identifier, 2 compressed_archive_size,
//	                 3 uncompressed_archive_size, 4 toc, 5 compression_info
//	TOC:             0 metadata
//	FileMetadata:    0 name, 1 type, 2 uncompressed_offset, 3 uncompressed_size,
//	                 4 linkname, 5 mode, 6 uid, 7 gid, 8 uname, 9 gname,
//	                 10 mod_time, 11 devmajor, 12 devminor, 13 xattrs
//	Xattr:           0 key, 1 value
//	CompressionInfo: 0 compression_algorithm (byte, default Gzip), 1 max_span_id,
//	                 2 span_digests, 3 checkpoints
//
// Every scalar defaults to zero except compression_algorithm. Marshal builds
// the tables in the same order as SOCI's marshaller, so equal Ztoc values
// encode to identical bytes with either implementation.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"unsafe"

	flatbuffers "github.com/google/flatbuffers/go"
	digest "github.com/opencontainers/go-digest"
)

// Decoding applies Limits (see limits.go). Besides them, the decoder refuses
// buffers that reuse their data: all decoded strings together may not
// exceed the buffer's size and all vector elements together may not exceed
// a quarter of it (each element needs at least a 4-byte slot). Buffers
// written by this package or by SOCI never share strings or vectors, so they
// always fit.

// Vtable slots, see the table at the top of this file.
const (
	slotZtocVersion = iota
	slotZtocBuildTool
	slotZtocCompressedSize
	slotZtocUncompressedSize
	slotZtocTOC
	slotZtocCompressionInfo
	numZtocSlots
)

const (
	slotFMName = iota
	slotFMType
	slotFMOffset
	slotFMSize
	slotFMLinkname
	slotFMMode
	slotFMUID
	slotFMGID
	slotFMUname
	slotFMGname
	slotFMModTime
	slotFMDevmajor
	slotFMDevminor
	slotFMXattrs
	numFMSlots
)

const (
	slotCIAlgorithm = iota
	slotCIMaxSpanID
	slotCISpanDigests
	slotCICheckpoints
	numCISlots
)

// malformed returns an error for a structural problem, wrapping ErrMalformed.
func malformed(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, ErrMalformed)...)
}

// invalidEntry returns an error for a bad TOC entry; it wraps both
// ErrInvalidEntry and ErrMalformed (the zTOC as a whole is unusable).
func invalidEntry(i int, format string, args ...any) error {
	return fmt.Errorf("ztoc: toc entry %d: %s: %w (%w)", i, fmt.Sprintf(format, args...), ErrInvalidEntry, ErrMalformed)
}

// ---------------------------------------------------------------------------
// Encoding

// Marshal validates z (against the limits opts select, default
// DefaultLimits) and serializes it to SOCI's zTOC flatbuffer. z must be
// complete: CompressionInfo.Checkpoints holds the checkpoint blob (a zTOC
// returned by Decode has it nil; fill it from the section reader first).
// PAX records are written in sorted key order, so the output is
// deterministic.
func Marshal(z *Ztoc, opts ...Option) ([]byte, error) {
	if z == nil {
		return nil, errors.New("ztoc: marshal nil zTOC")
	}
	lim := applyOptions(opts)
	if err := validate(z, bytes.NewReader(z.CompressionInfo.Checkpoints), int64(len(z.CompressionInfo.Checkpoints)), &lim); err != nil {
		return nil, fmt.Errorf("ztoc: marshal: %w", err)
	}
	est := estimateSize(z)
	if est > lim.MaxZtocSize-(1<<20) {
		return nil, overLimit(true, "ztoc: marshal: encoded zTOC would be about %d bytes, more than the %d-byte limit", est, lim.MaxZtocSize)
	}
	return encode(z, int(est))
}

// estimateSize returns an upper bound of the encoded size of z, to refuse
// zTOCs larger than the format can address before the Builder panics.
func estimateSize(z *Ztoc) int64 {
	n := int64(256 + len(z.Version) + len(z.BuildToolIdentifier) + len(z.CompressionInfo.Checkpoints))
	for _, d := range z.CompressionInfo.SpanDigests {
		n += int64(len(d)) + 12
	}
	for i := range z.TOC.FileMetadata {
		m := &z.TOC.FileMetadata[i]
		n += 220 + int64(len(m.Name)+len(m.Type)+len(m.Linkname)+len(m.Uname)+len(m.Gname))
		for k, v := range m.PAXRecords {
			n += 40 + int64(len(k)+len(v))
		}
	}
	return n
}

// encode writes z without validating it. The construction order matches
// SOCI's marshaller so that both produce the same bytes.
func encode(z *Ztoc, sizeHint int) ([]byte, error) {
	b := flatbuffers.NewBuilder(sizeHint)
	version := b.CreateString(z.Version)
	buildTool := b.CreateString(z.BuildToolIdentifier)

	entries := z.TOC.FileMetadata
	offs := make([]flatbuffers.UOffsetT, len(entries))
	for i := len(entries) - 1; i >= 0; i-- {
		off, err := encodeEntry(b, &entries[i])
		if err != nil {
			return nil, invalidEntry(i, "%v", err)
		}
		offs[i] = off
	}
	metadata := vectorOfOffsets(b, offs)
	b.StartObject(1)
	b.PrependUOffsetTSlot(0, metadata, 0)
	toc := b.EndObject()

	ci := &z.CompressionInfo
	checkpoints := b.CreateByteVector(ci.Checkpoints)
	digestOffs := make([]flatbuffers.UOffsetT, len(ci.SpanDigests))
	for i, d := range ci.SpanDigests {
		digestOffs[i] = b.CreateString(d.String())
	}
	spanDigests := vectorOfOffsets(b, digestOffs)
	b.StartObject(numCISlots)
	b.PrependInt32Slot(slotCIMaxSpanID, int32(ci.MaxSpanID), 0)
	b.PrependUOffsetTSlot(slotCISpanDigests, spanDigests, 0)
	b.PrependUOffsetTSlot(slotCICheckpoints, checkpoints, 0)
	b.PrependByteSlot(slotCIAlgorithm, byte(ci.Algorithm), byte(Gzip))
	compressionInfo := b.EndObject()

	b.StartObject(numZtocSlots)
	b.PrependUOffsetTSlot(slotZtocVersion, version, 0)
	b.PrependUOffsetTSlot(slotZtocBuildTool, buildTool, 0)
	b.PrependUOffsetTSlot(slotZtocTOC, toc, 0)
	b.PrependInt64Slot(slotZtocCompressedSize, z.CompressedArchiveSize, 0)
	b.PrependInt64Slot(slotZtocUncompressedSize, z.UncompressedArchiveSize, 0)
	b.PrependUOffsetTSlot(slotZtocCompressionInfo, compressionInfo, 0)
	b.Finish(b.EndObject())
	return b.FinishedBytes(), nil
}

// encodeEntry writes one FileMetadata table and the objects it refers to.
func encodeEntry(b *flatbuffers.Builder, m *FileMetadata) (flatbuffers.UOffsetT, error) {
	modTime, err := m.ModTime.MarshalText()
	if err != nil {
		return 0, fmt.Errorf("mod time: %w", err)
	}
	name := b.CreateString(m.Name)
	typ := b.CreateString(m.Type)
	linkname := b.CreateString(m.Linkname)
	uname := b.CreateString(m.Uname)
	gname := b.CreateString(m.Gname)
	mtime := b.CreateByteString(modTime)

	keys := make([]string, 0, len(m.PAXRecords))
	for k := range m.PAXRecords {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	xattrOffs := make([]flatbuffers.UOffsetT, len(keys))
	for i, k := range keys {
		key := b.CreateString(k)
		value := b.CreateString(m.PAXRecords[k])
		b.StartObject(2)
		b.PrependUOffsetTSlot(0, key, 0)
		b.PrependUOffsetTSlot(1, value, 0)
		xattrOffs[i] = b.EndObject()
	}
	xattrs := vectorOfOffsets(b, xattrOffs)

	b.StartObject(numFMSlots)
	b.PrependUOffsetTSlot(slotFMName, name, 0)
	b.PrependUOffsetTSlot(slotFMType, typ, 0)
	b.PrependInt64Slot(slotFMOffset, m.UncompressedOffset, 0)
	b.PrependInt64Slot(slotFMSize, m.UncompressedSize, 0)
	b.PrependUOffsetTSlot(slotFMLinkname, linkname, 0)
	b.PrependInt64Slot(slotFMMode, m.Mode, 0)
	b.PrependUint32Slot(slotFMUID, m.UID, 0)
	b.PrependUint32Slot(slotFMGID, m.GID, 0)
	b.PrependUOffsetTSlot(slotFMUname, uname, 0)
	b.PrependUOffsetTSlot(slotFMGname, gname, 0)
	b.PrependUOffsetTSlot(slotFMModTime, mtime, 0)
	b.PrependInt64Slot(slotFMDevmajor, m.Devmajor, 0)
	b.PrependInt64Slot(slotFMDevminor, m.Devminor, 0)
	b.PrependUOffsetTSlot(slotFMXattrs, xattrs, 0)
	return b.EndObject(), nil
}

// vectorOfOffsets writes a vector of references (tables or strings).
func vectorOfOffsets(b *flatbuffers.Builder, offs []flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	b.StartVector(4, len(offs), 4)
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

// ---------------------------------------------------------------------------
// Decoding

// Unmarshal decodes and validates a serialized zTOC held in memory, within
// the limits opts select (default DefaultLimits). The returned Ztoc does not
// alias b (CompressionInfo.Checkpoints is a copy).
func Unmarshal(b []byte, opts ...Option) (*Ztoc, error) {
	lim := applyOptions(opts)
	if int64(len(b)) > lim.MaxZtocSize {
		return nil, overLimit(true, "ztoc: decode: %d bytes exceed the %d-byte limit", len(b), lim.MaxZtocSize)
	}
	w := &wire{head: b, size: uint64(len(b))}
	z, cpPos, cpLen, err := decodeZtoc(w, true, &lim)
	if err != nil {
		return nil, err
	}
	blob := b[cpPos : cpPos+cpLen]
	if err := validate(z, bytes.NewReader(blob), int64(len(blob)), &lim); err != nil {
		return nil, err
	}
	z.CompressionInfo.Checkpoints = bytes.Clone(blob)
	return z, nil
}

// Decode decodes and validates a serialized zTOC of size bytes read from r,
// within the limits opts select (default DefaultLimits), without reading
// the checkpoint blob's windows into memory: the returned
// Ztoc has CompressionInfo.Checkpoints == nil and the section reader covers
// the checkpoint blob inside r (pass it to ParseCheckpoints or read it for
// ParseTarZinfo).
//
// Decode first locates the checkpoints vector with a few small reads
// (root -> Ztoc -> compression_info -> checkpoints), then reads the bytes
// before and after the blob into memory and decodes them; no other object
// may overlap the blob. Validation reads the blob's header and the 17-byte
// position record of every checkpoint, never a window. Memory use is
// therefore about size minus the blob's length, plus the decoded Ztoc.
func Decode(r io.ReaderAt, size int64, opts ...Option) (*Ztoc, *io.SectionReader, error) {
	lim := applyOptions(opts)
	if size < 0 {
		return nil, nil, malformed("ztoc: decode: negative size %d", size)
	}
	if size > lim.MaxZtocSize {
		return nil, nil, overLimit(true, "ztoc: decode: %d bytes exceed the %d-byte limit", size, lim.MaxZtocSize)
	}
	probe := &wire{r: r, size: uint64(size)}
	cpPos, cpLen, err := locateCheckpoints(probe)
	if err != nil {
		return nil, nil, err
	}
	w := &wire{size: uint64(size), tailOff: cpPos + cpLen, holeStart: cpPos}
	w.head = make([]byte, cpPos)
	w.tail = make([]byte, uint64(size)-w.tailOff)
	if err := readFull(r, w.head, 0); err != nil {
		return nil, nil, fmt.Errorf("ztoc: decode: read %d bytes before the checkpoints: %w", len(w.head), err)
	}
	if err := readFull(r, w.tail, int64(w.tailOff)); err != nil {
		return nil, nil, fmt.Errorf("ztoc: decode: read %d bytes after the checkpoints: %w", len(w.tail), err)
	}
	// decodeZtoc checks that the checkpoints vector is the hole.
	z, _, _, err := decodeZtoc(w, false, &lim)
	if err != nil {
		return nil, nil, err
	}
	sr := io.NewSectionReader(r, int64(cpPos), int64(cpLen))
	if err := validate(z, sr, int64(cpLen), &lim); err != nil {
		return nil, nil, err
	}
	z.CompressionInfo.Checkpoints = nil
	return z, sr, nil
}

// readFull reads len(p) bytes at off, mapping a short read to ErrTruncated.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("short read of %d of %d bytes at %d: %w", n, len(p), off, ErrTruncated)
	}
	return err
}

// locateCheckpoints finds the checkpoints vector's contents [pos, pos+n).
// An absent vector is reported as an empty range at the end of the buffer.
func locateCheckpoints(w *wire) (pos, n uint64, err error) {
	root, err := w.root()
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode root: %w", err)
	}
	ci, ok, err := w.tableField(root, slotZtocCompressionInfo)
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode compression info: %w", err)
	}
	if !ok {
		return w.size, 0, nil
	}
	pos, n, ok, err = w.byteVectorField(ci, slotCICheckpoints)
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode checkpoints: %w", err)
	}
	if !ok {
		return w.size, 0, nil
	}
	return pos, n, nil
}

// decoder holds the state of one decode: the budgets that bound work and
// the interned strings.
type decoder struct {
	w           *wire
	lim         *Limits
	stringBytes uint64 // left to decode
	elements    uint64 // vector elements left to decode
	metadata    int64  // estimated memory of the entries decoded so far
	intern      map[string]string
}

// decodeZtoc decodes the tables of a zTOC (without semantic validation)
// and returns the position and length of the checkpoint blob's contents.
// When inMemory is false the blob must be w's hole.
func decodeZtoc(w *wire, inMemory bool, lim *Limits) (z *Ztoc, cpPos, cpLen uint64, err error) {
	d := &decoder{w: w, lim: lim, stringBytes: w.size, elements: w.size / 4, intern: make(map[string]string)}
	root, err := w.root()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("ztoc: decode root: %w", err)
	}
	z = new(Ztoc)
	if z.Version, err = d.stringField(root, slotZtocVersion, maxMetadataStringLen); err != nil {
		return nil, 0, 0, fmt.Errorf("ztoc: decode version: %w", err)
	}
	if z.BuildToolIdentifier, err = d.stringField(root, slotZtocBuildTool, maxMetadataStringLen); err != nil {
		return nil, 0, 0, fmt.Errorf("ztoc: decode build tool identifier: %w", err)
	}
	if z.CompressedArchiveSize, err = w.int64Field(root, slotZtocCompressedSize); err != nil {
		return nil, 0, 0, fmt.Errorf("ztoc: decode compressed archive size: %w", err)
	}
	if z.UncompressedArchiveSize, err = w.int64Field(root, slotZtocUncompressedSize); err != nil {
		return nil, 0, 0, fmt.Errorf("ztoc: decode uncompressed archive size: %w", err)
	}
	if err := d.decodeTOC(root, &z.TOC); err != nil {
		return nil, 0, 0, err
	}
	cpPos, cpLen, err = d.decodeCompressionInfo(root, &z.CompressionInfo, inMemory)
	if err != nil {
		return nil, 0, 0, err
	}
	return z, cpPos, cpLen, nil
}

func (d *decoder) decodeTOC(root table, toc *TOC) error {
	t, ok, err := d.w.tableField(root, slotZtocTOC)
	if err != nil {
		return fmt.Errorf("ztoc: decode toc: %w", err)
	}
	if !ok {
		return nil
	}
	vec, n, ok, err := d.vectorField(t, 0, uint64(d.lim.MaxEntries))
	if err != nil {
		return fmt.Errorf("ztoc: decode toc entries: %w", err)
	}
	if !ok || n == 0 {
		return nil
	}
	d.metadata = int64(n) * int64(unsafe.Sizeof(FileMetadata{}))
	if d.metadata > d.lim.MaxMetadataBytes {
		return overLimit(true, "ztoc: decode toc: %d entries exceed the %d-byte metadata limit", n, d.lim.MaxMetadataBytes)
	}
	toc.FileMetadata = make([]FileMetadata, n)
	for i := range toc.FileMetadata {
		et, err := d.w.tableAt(vec + 4*uint64(i))
		if err != nil {
			return fmt.Errorf("ztoc: decode toc entry %d: %w", i, err)
		}
		m := &toc.FileMetadata[i]
		if err := d.decodeEntry(et, m); err != nil {
			return fmt.Errorf("ztoc: decode toc entry %d %w", i, err)
		}
		if err := d.lim.checkEntry(m); err != nil {
			return overLimit(true, "ztoc: decode toc entry %d (%.100q): %v", i, m.Name, err)
		}
		if d.metadata += entryCost(m); d.metadata > d.lim.MaxMetadataBytes {
			return overLimit(true, "ztoc: decode toc: entries up to %d exceed the %d-byte metadata limit", i, d.lim.MaxMetadataBytes)
		}
	}
	return nil
}

// decodeEntry decodes one FileMetadata table. Its errors start with the
// field name so that the caller can prefix "toc entry N".
func (d *decoder) decodeEntry(t table, m *FileMetadata) error {
	w := d.w
	var err error
	str := func(slot int, max uint64, name string, dst *string, intern bool) {
		if err != nil {
			return
		}
		var s string
		if intern {
			s, err = d.internedStringField(t, slot, max)
		} else {
			s, err = d.stringField(t, slot, max)
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		}
		*dst = s
	}
	i64 := func(slot int, name string, dst *int64) {
		if err != nil {
			return
		}
		if *dst, err = w.int64Field(t, slot); err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		}
	}
	u32 := func(slot int, name string, dst *uint32) {
		if err != nil {
			return
		}
		if *dst, err = w.uint32Field(t, slot); err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		}
	}
	var modTime string
	nameMax := uint64(d.lim.MaxNameLen)
	str(slotFMName, nameMax, "name", &m.Name, false)
	str(slotFMType, maxMetadataStringLen, "type", &m.Type, true)
	i64(slotFMOffset, "uncompressed offset", &m.UncompressedOffset)
	i64(slotFMSize, "uncompressed size", &m.UncompressedSize)
	str(slotFMLinkname, nameMax, "linkname", &m.Linkname, false)
	i64(slotFMMode, "mode", &m.Mode)
	u32(slotFMUID, "uid", &m.UID)
	u32(slotFMGID, "gid", &m.GID)
	str(slotFMUname, maxMetadataStringLen, "uname", &m.Uname, true)
	str(slotFMGname, maxMetadataStringLen, "gname", &m.Gname, true)
	str(slotFMModTime, maxMetadataStringLen, "mod time", &modTime, true)
	i64(slotFMDevmajor, "devmajor", &m.Devmajor)
	i64(slotFMDevminor, "devminor", &m.Devminor)
	if err != nil {
		return err
	}
	// SOCI writes an empty mod_time when time.Time.MarshalText fails and
	// reads it back as the zero time; do the same.
	if modTime != "" {
		if err := m.ModTime.UnmarshalText([]byte(modTime)); err != nil {
			return fmt.Errorf("mod time %q: %v: %w (%w)", modTime, err, ErrInvalidEntry, ErrMalformed)
		}
	}
	vec, n, ok, err := d.vectorField(t, slotFMXattrs, uint64(d.lim.MaxPAXRecords))
	if err != nil {
		return fmt.Errorf("xattrs: %w", err)
	}
	if !ok || n == 0 {
		return nil
	}
	m.PAXRecords = make(map[string]string, n)
	for j := uint64(0); j < n; j++ {
		xt, err := w.tableAt(vec + 4*j)
		if err != nil {
			return fmt.Errorf("xattr %d: %w", j, err)
		}
		key, err := d.stringField(xt, 0, maxMetadataStringLen)
		if err != nil {
			return fmt.Errorf("xattr %d key: %w", j, err)
		}
		value, err := d.stringField(xt, 1, uint64(d.lim.MaxPAXBytes))
		if err != nil {
			return fmt.Errorf("xattr %d value: %w", j, err)
		}
		// Duplicate keys: the last one wins, as in SOCI's decoder.
		m.PAXRecords[key] = value
	}
	return nil
}

func (d *decoder) decodeCompressionInfo(root table, ci *CompressionInfo, inMemory bool) (cpPos, cpLen uint64, err error) {
	w := d.w
	t, ok, err := w.tableField(root, slotZtocCompressionInfo)
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode compression info: %w", err)
	}
	if !ok {
		return 0, 0, malformed("ztoc: decode compression info: missing")
	}
	alg, err := w.uint8Field(t, slotCIAlgorithm, byte(Gzip))
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode compression algorithm: %w", err)
	}
	ci.Algorithm = CompressionAlgorithm(alg)
	maxSpan, err := w.uint32Field(t, slotCIMaxSpanID)
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode max span id: %w", err)
	}
	ci.MaxSpanID = SpanID(int32(maxSpan))
	vec, n, ok, err := d.vectorField(t, slotCISpanDigests, uint64(d.lim.MaxSpans))
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode span digests: %w", err)
	}
	if ok && n > 0 {
		ci.SpanDigests = make([]digest.Digest, n)
		for i := range ci.SpanDigests {
			pos, err := w.follow(vec + 4*uint64(i))
			if err == nil {
				var s string
				s, err = d.stringAt(pos, maxMetadataStringLen)
				ci.SpanDigests[i] = digest.Digest(s)
			}
			if err != nil {
				return 0, 0, fmt.Errorf("ztoc: decode span digest %d: %w", i, err)
			}
		}
	}
	cpPos, cpLen, ok, err = w.byteVectorField(t, slotCICheckpoints)
	if err != nil {
		return 0, 0, fmt.Errorf("ztoc: decode checkpoints: %w", err)
	}
	if !ok {
		cpPos, cpLen = w.size, 0
	}
	if !inMemory && (cpPos != w.holeStart || cpPos+cpLen != w.tailOff) {
		return 0, 0, malformed("ztoc: decode checkpoints: not where located")
	}
	if inMemory {
		// Make sure the blob is addressable as one slice of head.
		if _, err := w.bytes(cpPos, cpLen); err != nil {
			return 0, 0, fmt.Errorf("ztoc: decode checkpoints: %w", err)
		}
	}
	return cpPos, cpLen, nil
}

// stringField decodes an optional string field ("" when absent).
func (d *decoder) stringField(t table, slot int, max uint64) (string, error) {
	pos, ok, err := d.w.refField(t, slot)
	if err != nil || !ok {
		return "", err
	}
	return d.stringAt(pos, max)
}

// internedStringField is stringField for values that repeat across entries
// (types, user and group names, mod times): each distinct value is
// allocated once.
func (d *decoder) internedStringField(t table, slot int, max uint64) (string, error) {
	pos, ok, err := d.w.refField(t, slot)
	if err != nil || !ok {
		return "", err
	}
	b, err := d.rawString(pos, max)
	if err != nil {
		return "", err
	}
	if s, ok := d.intern[string(b)]; ok {
		return s, nil
	}
	s := string(b)
	if len(d.intern) < 1<<16 {
		d.intern[s] = s
	}
	return s, nil
}

func (d *decoder) stringAt(pos, max uint64) (string, error) {
	b, err := d.rawString(pos, max)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// rawString returns the bytes of the string at pos, charging the budget.
// Like the flatbuffers verifier it requires the terminating NUL, which
// every writer emits; this also catches buffers truncated at the end.
func (d *decoder) rawString(pos, max uint64) ([]byte, error) {
	n, err := d.w.u32(pos)
	if err != nil {
		return nil, err
	}
	if uint64(n) > max {
		return nil, overLimit(true, "string of %d bytes exceeds the %d-byte limit", n, max)
	}
	if uint64(n) > d.stringBytes {
		return nil, malformed("strings exceed the buffer size (shared data)")
	}
	d.stringBytes -= uint64(n)
	b, err := d.w.bytes(pos+4, uint64(n)+1)
	if err != nil {
		return nil, err
	}
	if b[n] != 0 {
		return nil, malformed("string not NUL-terminated")
	}
	return b[:n], nil
}

// vectorField returns the position of the first element and the length of
// a vector of 4-byte references, charging the element budget.
func (d *decoder) vectorField(t table, slot int, max uint64) (elems, n uint64, ok bool, err error) {
	pos, ok, err := d.w.refField(t, slot)
	if err != nil || !ok {
		return 0, 0, false, err
	}
	n32, err := d.w.u32(pos)
	if err != nil {
		return 0, 0, false, err
	}
	n = uint64(n32)
	if n > max {
		return 0, 0, false, overLimit(true, "vector of %d elements exceeds the limit of %d", n, max)
	}
	if n > d.elements {
		return 0, 0, false, malformed("vector elements exceed the buffer size (shared data)")
	}
	d.elements -= n
	if _, err := d.w.bytes(pos+4, 4*n); err != nil {
		return 0, 0, false, fmt.Errorf("vector of %d elements: %w", n, err)
	}
	return pos + 4, n, true, nil
}
