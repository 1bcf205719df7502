package ztoc

// This file is lazypull's native layout of a gzip zTOC: the same flatbuffer,
// but with the checkpoint windows moved out into a blob of their own, so
// that a machine can fetch the file table and the checkpoint positions (a
// few bytes per span) when it looks a layer up, and each span's 32 KiB
// window only with the span (a range of the windows blob). It is used
// between lazypull machines (the local and the shared artifact stores);
// SOCI's own format (windows inline) is what goes to image registries, and
// both convert into each other without loss.
//
// Meta: the zTOC flatbuffer with Version NativeVersion whose checkpoints
// bytes are, little-endian and packed:
//
//	magic "LZPCKPT1" (8 bytes), int32 count, int64 span size,
//	[32]byte sha256 of the windows blob, int64 size of the windows blob,
//	count x (int64 in, int64 out, uint8 bits, [32]byte sha256 of the window)
//
// Windows: count x 32768 bytes, the window of checkpoint i at i*32768.
// Every window read is checked against its digest, so a window fetched
// alone (a range of the windows blob) is as trustworthy as the meta.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
)

// NativeVersion is the Version of a zTOC in lazypull's native layout.
const NativeVersion = "lazypull-native-1"

const (
	nativeMagic      = "LZPCKPT1"
	nativeHeaderSize = 8 + 4 + 8 + 32 + 8
	nativeRecordSize = checkpointPosSize + sha256.Size
)

// Annotations of a SOCI index's zTOC descriptor naming the same index in
// the native layout, pushed beside it (SOCI clients ignore them; lazypull
// fetches the small meta instead of the zTOC, and the windows it names
// with their spans).
const (
	AnnotationNativeZtoc     = "io.github.lazypull.native-ztoc"
	AnnotationNativeZtocSize = "io.github.lazypull.native-ztoc.size"
)

// ErrNoWindows is returned for a window of a native zTOC opened without a
// source of its windows blob (see WithWindows).
var ErrNoWindows = errors.New("ztoc: no windows for a native zTOC")

// WithWindows gives a native zTOC the reader of its windows blob (the
// local file, or ranges fetched on demand).
func WithWindows(r io.ReaderAt) Option {
	return func(o *options) { o.windows = r }
}

// MarshalNative encodes z (a gzip zTOC with its checkpoint blob in memory,
// as Build returns it) in the native layout: meta and windows blobs.
// Uncompressed-tar zTOCs have no windows: their meta is Marshal's bytes,
// and windows is nil.
func MarshalNative(z *Ztoc, opts ...Option) (meta, windows []byte, err error) {
	if z.CompressionInfo.Algorithm != Gzip {
		meta, err = Marshal(z, opts...)
		return meta, nil, err
	}
	lim := applyOptions(opts)
	cp := z.CompressionInfo.Checkpoints
	t, err := ParseCheckpoints(bytes.NewReader(cp), int64(len(cp)), WithLimits(lim))
	if err != nil {
		return nil, nil, err
	}
	windows = make([]byte, len(t.Points)*WindowSize)
	for i := range t.Points {
		if _, err := t.Window(i, windows[i*WindowSize:(i+1)*WindowSize]); err != nil {
			return nil, nil, err
		}
	}
	nz := *z
	nz.Version = NativeVersion
	nz.CompressionInfo.Checkpoints = encodeCompact(t.SpanSize, t.Points, windows)
	meta, err = Marshal(&nz, opts...)
	if err != nil {
		return nil, nil, err
	}
	return meta, windows, nil
}

// encodeCompact writes the native checkpoint table.
func encodeCompact(spanSize int64, points []Checkpoint, windows []byte) []byte {
	b := make([]byte, nativeHeaderSize+len(points)*nativeRecordSize)
	copy(b, nativeMagic)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(points)))
	binary.LittleEndian.PutUint64(b[12:], uint64(spanSize))
	sum := sha256.Sum256(windows)
	copy(b[20:52], sum[:])
	binary.LittleEndian.PutUint64(b[52:], uint64(len(windows)))
	for i, p := range points {
		r := b[nativeHeaderSize+i*nativeRecordSize:]
		binary.LittleEndian.PutUint64(r[0:], uint64(p.In))
		binary.LittleEndian.PutUint64(r[8:], uint64(p.Out))
		r[16] = p.Bits
		ws := sha256.Sum256(windows[i*WindowSize : (i+1)*WindowSize])
		copy(r[checkpointPosSize:], ws[:])
	}
	return b
}

// parseCompact reads the native checkpoint table of size bytes from r;
// windows reads the windows blob (nil: Window fails with ErrNoWindows).
func parseCompact(r io.ReaderAt, size int64, windows io.ReaderAt, lim Limits) (*CheckpointTable, error) {
	if size < nativeHeaderSize {
		return nil, malformed("native checkpoints: %d bytes, shorter than the header", size)
	}
	if size > lim.MaxZtocSize {
		return nil, overLimit(true, "native checkpoints: %d bytes exceed the limit", size)
	}
	b := make([]byte, size)
	if err := readFull(r, b, 0); err != nil {
		return nil, fmt.Errorf("native checkpoints: %w", err)
	}
	if string(b[:8]) != nativeMagic {
		return nil, malformed("native checkpoints: bad magic")
	}
	count := int64(binary.LittleEndian.Uint32(b[8:]))
	if count < 1 || count > int64(lim.MaxSpans) {
		return nil, overLimit(count >= 1, "native checkpoints: %d checkpoints outside [1, %d]", count, lim.MaxSpans)
	}
	if size != nativeHeaderSize+count*nativeRecordSize {
		return nil, malformed("native checkpoints: %d bytes for %d checkpoints", size, count)
	}
	t := &CheckpointTable{SpanSize: int64(binary.LittleEndian.Uint64(b[12:])), Version: nativeTableVersion, r: windows}
	if t.SpanSize <= 0 {
		return nil, malformed("native checkpoints: span size %d not positive", t.SpanSize)
	}
	t.windowsDigest = digest.NewDigestFromBytes(digest.SHA256, b[20:52])
	t.windowsSize = int64(binary.LittleEndian.Uint64(b[52:]))
	if t.windowsSize != count*WindowSize {
		return nil, malformed("native checkpoints: windows blob of %d bytes for %d checkpoints", t.windowsSize, count)
	}
	t.Points = make([]Checkpoint, count)
	t.windowDigests = make([][sha256.Size]byte, count)
	for i := range t.Points {
		r := b[nativeHeaderSize+i*nativeRecordSize:]
		t.Points[i] = Checkpoint{
			In:   int64(binary.LittleEndian.Uint64(r[0:])),
			Out:  int64(binary.LittleEndian.Uint64(r[8:])),
			Bits: r[16],
		}
		copy(t.windowDigests[i][:], r[checkpointPosSize:])
	}
	if err := validatePoints(t.Points, lim.MaxSpans); err != nil {
		return nil, err
	}
	return t, nil
}

// nativeTableVersion is CheckpointTable.Version of a native table.
const nativeTableVersion = 3

// NewLayerIndexFromBytes opens the serialized zTOC data (see
// OpenLayerIndex).
func NewLayerIndexFromBytes(data []byte, opts ...Option) (*LayerIndex, error) {
	return OpenLayerIndex(bytes.NewReader(data), int64(len(data)), opts...)
}

// NativeWindows returns the digest and size of the windows blob a native
// zTOC names; ok is false for other zTOCs.
func (x *LayerIndex) NativeWindows() (d digest.Digest, size int64, ok bool) {
	if x.cps == nil || x.cps.Version != nativeTableVersion {
		return "", 0, false
	}
	return x.cps.windowsDigest, x.cps.windowsSize, true
}

// WindowRange returns the range of checkpoint id's window in the windows
// blob of a native zTOC.
func WindowRange(id SpanID) (off, n int64) { return int64(id) * WindowSize, WindowSize }

// MarshalSOCI encodes the index in SOCI's format (windows inline, Version
// Version), reading the windows of a native zTOC from its source.
func (x *LayerIndex) MarshalSOCI() ([]byte, error) {
	z := *x.z
	if x.cps != nil {
		windows := make([][]byte, len(x.cps.Points))
		for i := range windows {
			w, err := x.cps.Window(i, make([]byte, WindowSize))
			if err != nil {
				return nil, err
			}
			windows[i] = w
		}
		var buf bytes.Buffer
		if err := EncodeCheckpoints(&buf, x.cps.SpanSize, x.cps.Points, windows); err != nil {
			return nil, err
		}
		z.CompressionInfo.Checkpoints = buf.Bytes()
	}
	z.Version = Version
	return Marshal(&z, WithLimits(x.lim))
}

// CheckNativeWindow checks w against the digest a native zTOC has for the
// window of checkpoint id (e.g. before caching a window fetched alone).
func (x *LayerIndex) CheckNativeWindow(id SpanID, w []byte) error {
	if x.cps == nil || x.cps.Version != nativeTableVersion {
		return fmt.Errorf("%w: not a native zTOC", ErrMalformed)
	}
	if int(id) < 0 || int(id) >= len(x.cps.windowDigests) || len(w) != WindowSize {
		return fmt.Errorf("%w: window %d of %d bytes", ErrMalformed, id, len(w))
	}
	if sha256.Sum256(w) != x.cps.windowDigests[id] {
		return fmt.Errorf("%w: the window of checkpoint %d does not match its digest", ErrSpanDigest, id)
	}
	return nil
}
