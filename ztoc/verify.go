package ztoc

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc/internal/flate"
)

// VerifyOptions says what Verify checks beyond the zTOC itself.
type VerifyOptions struct {
	// Digest is the digest of the layer blob (from the image manifest).
	// Required: a zTOC is only ever verified against a named blob.
	Digest digest.Digest
	// DiffID is the digest of the layer's uncompressed tar stream (the image
	// config's rootfs.diff_ids entry). "" skips that comparison; the result
	// still reports it.
	DiffID digest.Digest
	// OnProgress, when set, is called with the number of compressed bytes
	// read so far, about every MiB.
	OnProgress func(compressedBytes int64)
	// OnCheckpoint, when set, is called with n each time checkpoint n-1 of
	// a gzip zTOC has been found to match the real stream in every field
	// (in, bits, out and window): checkpoints 0..n-1 are then proven, so
	// spans 0..n-1 inflate to exactly the layer's bytes (their compressed
	// bytes being the blob's), whatever the rest of the stream turns out
	// to be. It runs on the decoding goroutine and must be quick.
	OnCheckpoint func(n int)
	// OnWindow, when set, is called for a native zTOC (windows in a blob of
	// their own) with checkpoint id's window as the stream has it
	// (WindowSize bytes, zero-padded in front as Build writes it, valid
	// only during the call) once it matched the window's digest in the
	// zTOC, before OnCheckpoint announces the checkpoint: the caller can
	// keep it instead of fetching it from the windows blob. Verify itself
	// never reads a native zTOC's windows blob.
	OnWindow func(id int, window []byte)
}

// VerifyResult describes the layer Verify read.
type VerifyResult struct {
	// Digest and Size describe the compressed blob; DiffID and
	// UncompressedSize its tar stream.
	Digest           digest.Digest
	Size             int64
	DiffID           digest.Digest
	UncompressedSize int64
	// Entries and Checkpoints are how many of each were checked.
	Entries, Checkpoints int
}

// Verify reads the compressed layer blob from r once, to its end, and
// checks that x describes it completely:
//
//   - the blob: its digest is opts.Digest, its size the zTOC's compressed
//     archive size, and (when opts.DiffID is set) its tar stream's digest is
//     opts.DiffID; gzip CRC-32 and ISIZE of every member are checked;
//   - every checkpoint of a gzip layer the zTOC HAS (wherever its builder
//     placed it: SOCI's placement and ours both pass): it lies at a real
//     non-final deflate block boundary (in, bits), with the stream's
//     uncompressed offset there (out), and its window holds exactly the
//     last min(out, 32 KiB) bytes of output before it; no checkpoint lies
//     beyond the stream;
//   - every span's digest, over the span's exact compressed range;
//   - the uncompressed size: at least the end of the tar archive (its
//     end-of-archive marker, where SOCI stops counting) and at most the
//     stream's length;
//   - every entry, in stream order, against its tar header: name, type,
//     data offset, size, link target, mode, owner ids and names,
//     modification time, device numbers and PAX records (xattrs and
//     overrides included), hard links against their own headers; no entry
//     missing, none extra.
//
// Together these make every byte the zTOC can serve (spans inflated from
// its checkpoints) and every metadata field it can serve equal to the
// layer's. Uncompressed tar layers are checked the same way (their spans
// are fixed slices; the DiffID is the blob digest).
//
// A difference is an error wrapping ErrVerify that names the first one
// found (the stream is not read further). When r fails, its error is
// returned wrapped (not ErrVerify); when ctx ends, ctx.Err() is returned.
// Memory use is bounded (a few MiB) whatever the layer holds.
func (x *LayerIndex) Verify(ctx context.Context, r io.Reader, opts VerifyOptions) (*VerifyResult, error) {
	if err := opts.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("ztoc: verify: the layer's digest is required: %w", err)
	}
	if opts.DiffID != "" {
		if err := opts.DiffID.Validate(); err != nil {
			return nil, fmt.Errorf("ztoc: verify: DiffID: %w", err)
		}
	}
	src := &verifySource{r: r, ctx: ctx}
	v := &verifier{x: x, opts: opts, src: src}
	res, err := v.run(ctx)
	if err == nil {
		return res, nil
	}
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case src.err != nil:
		return nil, fmt.Errorf("ztoc: verify: reading the layer: %w", src.err)
	case errors.Is(err, ErrVerify):
		return nil, err
	}
	// A stream that is not a valid layer (corrupt, truncated, bad checksum,
	// refused tar entry) is not the layer the zTOC describes.
	return nil, fmt.Errorf("ztoc: verify: %w: %w", ErrVerify, err)
}

// verifyFailed returns an error for a difference between zTOC and layer.
func verifyFailed(format string, args ...any) error {
	return fmt.Errorf("ztoc: verify: "+format+": %w", append(args, ErrVerify)...)
}

// verifySource reads the blob, remembering its own error (to tell a failed
// read from a bad layer) and stopping when ctx ends.
type verifySource struct {
	r   io.Reader
	ctx context.Context
	err error
}

func (s *verifySource) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// verifier holds the state of one Verify pass.
type verifier struct {
	x    *LayerIndex
	opts VerifyOptions
	src  *verifySource

	consumed int64
	next     int // next checkpoint to meet (gzip)
	window   []byte
	// failed is the first difference found in a callback, reported as it
	// is rather than wrapped by the decoder and archive/tar.
	failed error
}

// fail records err as the first difference found (if it is one).
func (v *verifier) fail(err error) error {
	if err != nil && v.failed == nil && errors.Is(err, ErrVerify) {
		v.failed = err
	}
	return err
}

func (v *verifier) run(ctx context.Context) (*VerifyResult, error) {
	x := v.x
	lim := x.lim
	blob := newAsyncHash()
	defer blob.stop()
	spans := newSpanHasher(nil, &lim)
	defer spans.stop()
	spans.check = func(id SpanID, d digest.Digest) error {
		if want := x.SpanDigest(id); d != want {
			c0, c1 := x.SpanCompressedRange(id)
			return v.fail(verifyFailed("span %d [%d, %d) has digest %s, the zTOC says %s", id, c0, c1, d, want))
		}
		return nil
	}
	nextProgress := int64(1 << 20)
	progress := func(n int) {
		v.consumed += int64(n)
		if v.opts.OnProgress != nil && v.consumed >= nextProgress {
			v.opts.OnProgress(v.consumed)
			nextProgress = v.consumed + 1<<20
		}
	}

	var walker *tarWalker
	uncompressed := blob
	// The real stream may run past the zTOC's uncompressed size (SOCI's
	// stops at the end-of-archive marker) by padding only.
	maxStream := x.z.UncompressedArchiveSize + lim.MaxSpanSize
	streamLimit := func(pos int64, p []byte) error {
		if end := pos + int64(len(p)); end > maxStream {
			return verifyFailed("the tar stream goes on past %d bytes; the zTOC says %d", maxStream, x.z.UncompressedArchiveSize)
		}
		return nil
	}
	if x.cps != nil {
		br := bufio.NewReaderSize(v.src, 1<<16)
		if head, _ := br.Peek(2); !bytes.Equal(head, gzipMagic) {
			if v.src.err != nil {
				return nil, v.src.err
			}
			return nil, verifyFailed("the layer is not gzip-compressed (starts with % x), the zTOC is for gzip", head)
		}
		dec := flate.NewGzip(br)
		dec.OnConsumed(func(p []byte) {
			blob.write(p)
			spans.write(p)
			progress(len(p))
		})
		v.window = make([]byte, WindowSize)
		dec.OnBoundary(func(bd flate.Boundary, window []byte) error {
			return v.fail(v.boundary(bd, window, spans))
		})
		uncompressed = newAsyncHash()
		defer uncompressed.stop()
		walker = &tarWalker{r: dec, hash: uncompressed, onData: func(pos int64, p []byte) error {
			if err := streamLimit(pos, p); err != nil {
				return err
			}
			return spans.err
		}}
	} else {
		if err := spans.cut(0, 0); err != nil {
			return nil, err
		}
		lastCut := int64(0)
		walker = &tarWalker{r: v.src, hash: blob, onData: func(pos int64, p []byte) error {
			progress(len(p))
			if err := streamLimit(pos, p); err != nil {
				return err
			}
			for len(p) > 0 {
				if pos%x.tarSpanSize == 0 && pos != lastCut {
					if err := spans.cut(pos, 0); err != nil {
						return err
					}
					lastCut = pos
				}
				n := min(int64(len(p)), x.tarSpanSize-pos%x.tarSpanSize)
				spans.write(p[:n])
				pos += n
				p = p[n:]
			}
			return spans.err
		}}
	}

	entries := x.z.TOC.FileMetadata
	tarEnd, err := walker.walk(ctx, func(i int, h *tar.Header, off int64) error {
		if i >= len(entries) {
			return verifyFailed("the layer has more than the zTOC's %d entries (the next is %.200q at %d)", len(entries), h.Name, off)
		}
		got, err := metadataFromHeader(h, off)
		if err != nil {
			return verifyFailed("tar entry %d: %v", i, err)
		}
		if d := diffEntry(&entries[i], &got); d != "" {
			return verifyFailed("entry %d (%.200q): the zTOC has %s", i, entries[i].Name, d)
		}
		return nil
	})
	if err != nil {
		if v.failed != nil {
			return nil, v.failed
		}
		return nil, mapFlateErr(err)
	}
	if n := walker.entries; n != len(entries) {
		return nil, verifyFailed("the layer has %d entries, the zTOC %d", n, len(entries))
	}
	if x.cps != nil && v.next < len(x.cps.Points) {
		p := x.cps.Points[v.next]
		return nil, verifyFailed("checkpoint %d (in %d, bits %d, out %d) is not a block boundary of the stream: none follows",
			v.next, p.In, p.Bits, p.Out)
	}
	if v.consumed != x.z.CompressedArchiveSize {
		return nil, verifyFailed("the blob has %d bytes, the zTOC says %d", v.consumed, x.z.CompressedArchiveSize)
	}
	if u := x.z.UncompressedArchiveSize; u < tarEnd || u > walker.pos {
		return nil, verifyFailed("the zTOC's uncompressed size %d is outside [%d, %d] (end of the tar archive, end of the stream)", u, tarEnd, walker.pos)
	}
	var lastSpan int64
	if x.cps != nil {
		lastSpan = walker.pos - x.cps.Points[len(x.cps.Points)-1].Out
	}
	if err := spans.finish(lastSpan); err != nil {
		return nil, err
	}
	if got, want := len(spans.digests), x.nspans; got != want {
		return nil, verifyFailed("the layer has %d spans, the zTOC %d", got, want)
	}
	res := &VerifyResult{
		Digest:           blob.digest(),
		Size:             v.consumed,
		DiffID:           uncompressed.digest(),
		UncompressedSize: walker.pos,
		Entries:          len(entries),
	}
	if x.cps != nil {
		res.Checkpoints = len(x.cps.Points)
	}
	if res.Digest != v.opts.Digest {
		return nil, verifyFailed("the blob's digest is %s, not %s", res.Digest, v.opts.Digest)
	}
	if v.opts.DiffID != "" && res.DiffID != v.opts.DiffID {
		return nil, verifyFailed("the tar stream's digest (DiffID) is %s, not %s", res.DiffID, v.opts.DiffID)
	}
	return res, nil
}

// boundary checks the zTOC's next checkpoint against a block boundary of
// the real stream.
func (v *verifier) boundary(bd flate.Boundary, window []byte, spans *spanHasher) error {
	points := v.x.cps.Points
	if v.next >= len(points) {
		return nil
	}
	cp := points[v.next]
	pos, cpPos := 8*bd.In-int64(bd.Bits), 8*cp.In-int64(cp.Bits)
	switch {
	case cpPos < pos:
		return verifyFailed("checkpoint %d (in %d, bits %d) is not a deflate block boundary of the stream", v.next, cp.In, cp.Bits)
	case cpPos > pos:
		return nil
	case bd.Final:
		return verifyFailed("checkpoint %d (in %d, bits %d) is at the end of a final block, where decoding cannot resume", v.next, cp.In, cp.Bits)
	case cp.Out != bd.Out:
		return verifyFailed("checkpoint %d (in %d, bits %d) says out %d, the stream is at %d there", v.next, cp.In, cp.Bits, cp.Out, bd.Out)
	}
	if v.x.cps.Version == nativeTableVersion {
		// The zTOC has the digest of each window: the stream's own
		// window, padded as Build pads it, must have it. Nothing is
		// fetched, and the caller may keep the proven window.
		buf := v.window[:WindowSize]
		clear(buf[:WindowSize-len(window)])
		copy(buf[WindowSize-len(window):], window)
		if sha256.Sum256(buf) != v.x.cps.windowDigests[v.next] {
			return verifyFailed("checkpoint %d (in %d, out %d): the digest of its window is not that of the stream's last %d bytes before it",
				v.next, cp.In, cp.Out, len(window))
		}
		if v.opts.OnWindow != nil {
			v.opts.OnWindow(v.next, buf)
		}
		return v.proven(bd, spans)
	}
	stored, err := v.x.cps.Window(v.next, v.window)
	if err != nil {
		return fmt.Errorf("ztoc: verify: %w", err)
	}
	// Resuming uses the last min(out, 32 KiB) bytes of the window; the
	// decoder hands over exactly those bytes of real output.
	if got := stored[WindowSize-len(window):]; !bytes.Equal(got, window) {
		at := 0
		for at < len(window) && got[at] == window[at] {
			at++
		}
		return verifyFailed("checkpoint %d (in %d, out %d): its window differs from the stream's last %d bytes before it, first at uncompressed offset %d",
			v.next, cp.In, cp.Out, len(window), cp.Out-int64(len(window))+int64(at))
	}
	return v.proven(bd, spans)
}

// proven moves past the zTOC's next checkpoint, found to match the stream
// at bd.
func (v *verifier) proven(bd flate.Boundary, spans *spanHasher) error {
	if err := spans.cut(bd.In, bd.Bits); err != nil {
		return err
	}
	v.next++
	if v.opts.OnCheckpoint != nil {
		v.opts.OnCheckpoint(v.next)
	}
	return nil
}
