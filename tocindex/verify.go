package tocindex

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc"
)

// Want is what the image says of a layer.
type Want struct {
	// Digest and the Index's BlobSize are the blob's, from the manifest.
	Digest digest.Digest
	// DiffID is the uncompressed digest from the image config ("" skips the
	// check).
	DiffID digest.Digest
	// TarSize is the uncompressed length the store announced for the layer
	// (-1 when it announced none).
	TarSize int64
}

// Result is what VerifyLayer found.
type Result struct {
	DiffID  digest.Digest
	TarSize int64
	// SpanSums are the sha256 of every span's compressed bytes, for
	// TrustSpans.
	SpanSums [][sha256.Size]byte
}

// VerifyLayer reads the whole blob from r, in order, and checks that it is
// the layer the image and the TOC describe: its digest and size; that every
// region decompresses on its own to whole members or frames and that
// together they are the tar stream of the DiffID (and of the announced
// size); that the tar entries are the file table's, in order, field by
// field; and that every chunk is where the tar stream holds that file's
// data. A difference returns an error wrapping ErrVerify; an error reading r
// is returned as it is.
func (x *Index) VerifyLayer(ctx context.Context, r io.Reader, w Want) (*Result, error) {
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrVerify, fmt.Sprintf(format, args...))
	}
	blobHash := sha256.New()
	diffHash := sha256.New()
	pr, pw := io.Pipe()
	tarDone := make(chan tarResult, 1)
	go func() { tarDone <- x.readTar(pr) }()
	finished := false
	defer func() {
		if !finished {
			pw.CloseWithError(errors.New("verification stopped"))
			<-tarDone
		}
	}()

	out := &countWriter{w: io.MultiWriter(diffHash, pw)}
	regionTar := make([]int64, len(x.regions))
	sums := make([][sha256.Size]byte, len(x.spans))
	var buf []byte
	var read int64
	for si := range x.spans {
		s := &x.spans[si]
		spanHash := sha256.New()
		for ri := s.r0; ri < s.r1; ri++ {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			n := x.regionEnd(ri) - x.regions[ri].start
			if int64(cap(buf)) < n {
				buf = make([]byte, n)
			}
			b := buf[:n]
			if _, err := io.ReadFull(r, b); err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
					return nil, mismatch("the blob ends at %d, the TOC places data up to %d", read, x.size)
				}
				return nil, err
			}
			read += n
			blobHash.Write(b)
			spanHash.Write(b)
			regionTar[ri] = out.n
			if err := x.codec.DecodeAll(b, out); err != nil {
				if out.err != nil {
					// The tar reader stopped: its reason is the first difference.
					finished = true
					pw.Close()
					res := <-tarDone
					if res.err != nil {
						return nil, res.err
					}
				}
				return nil, mismatch("region at %d (%d bytes) does not decompress on its own: %v", x.regions[ri].start, n, err)
			}
		}
		spanHash.Sum(sums[si][:0])
	}
	var one [1]byte
	if k, _ := io.ReadFull(r, one[:]); k > 0 {
		return nil, mismatch("the blob has more than the %d bytes the manifest says", x.size)
	}
	finished = true
	pw.Close()
	res := <-tarDone
	if res.err != nil {
		return nil, res.err
	}
	if got := digest.NewDigest(digest.SHA256, blobHash); got != w.Digest {
		return nil, mismatch("blob digest %s, manifest says %s", got, w.Digest)
	}
	diffID := digest.NewDigest(digest.SHA256, diffHash)
	if w.DiffID != "" && diffID != w.DiffID {
		return nil, mismatch("DiffID %s, config says %s", diffID, w.DiffID)
	}
	if w.TarSize >= 0 && out.n != w.TarSize {
		return nil, mismatch("the tar stream has %d bytes, %d were announced", out.n, w.TarSize)
	}
	for ci := range x.chunks {
		c := &x.chunks[ci]
		ri, _ := slices.BinarySearchFunc(x.regions, c.Offset, func(r region, off int64) int { return cmpInt(r.start, off) })
		at := regionTar[ri] + c.Inner
		if want := res.dataAt[c.Entry] + c.FileOffset; at != want {
			return nil, mismatch("the chunk at %d of %q is at %d of the tar stream, the file's data at %d", c.FileOffset, x.entries[c.Entry].Name, at, want)
		}
	}
	return &Result{DiffID: diffID, TarSize: out.n, SpanSums: sums}, nil
}

type tarResult struct {
	dataAt []int64 // per entry, the tar offset of its data
	err    error
}

// readTar reads the tar stream from r, checks every entry against the file
// table and records where regular files' data starts.
func (x *Index) readTar(r *io.PipeReader) tarResult {
	cr := &countReader{r: r}
	tr := tar.NewReader(cr)
	dataAt := make([]int64, len(x.entries))
	fail := func(err error) tarResult {
		r.CloseWithError(err)
		return tarResult{err: err}
	}
	i := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(fmt.Errorf("%w: tar stream after %d entries: %v", ErrVerify, i, err))
		}
		if i >= len(x.entries) {
			return fail(fmt.Errorf("%w: tar entry %q is not in the table of contents", ErrVerify, h.Name))
		}
		if err := compareHeader(h, &x.entries[i], x.modRound); err != nil {
			return fail(fmt.Errorf("%w: entry %d (%q): %v", ErrVerify, i, x.entries[i].Name, err))
		}
		dataAt[i] = cr.n
		i++
	}
	if i != len(x.entries) {
		return fail(fmt.Errorf("%w: the tar stream ends after %d entries, the table of contents has %d", ErrVerify, i, len(x.entries)))
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return tarResult{err: err}
	}
	return tarResult{dataAt: dataAt}
}

// compareHeader checks that tar header h describes entry m as the FUSE tree
// serves it.
func compareHeader(h *tar.Header, m *ztoc.FileMetadata, round time.Duration) error {
	typ, err := TypeOf(h.Typeflag)
	if err != nil {
		return err
	}
	size := int64(0)
	if typ == ztoc.TypeReg {
		size = h.Size
	}
	switch {
	case h.Name != m.Name:
		return fmt.Errorf("tar entry %q", h.Name)
	case typ != m.Type:
		return fmt.Errorf("type %s in the tar stream, %s in the table of contents", typ, m.Type)
	case size != m.UncompressedSize:
		return fmt.Errorf("size %d in the tar stream, %d in the table of contents", size, m.UncompressedSize)
	case h.Mode != m.Mode:
		return fmt.Errorf("mode %o in the tar stream, %o in the table of contents", h.Mode, m.Mode)
	case int64(h.Uid) != int64(m.UID) || int64(h.Gid) != int64(m.GID):
		return fmt.Errorf("owner %d:%d in the tar stream, %d:%d in the table of contents", h.Uid, h.Gid, m.UID, m.GID)
	case (typ == ztoc.TypeSymlink || typ == ztoc.TypeHardlink) && h.Linkname != m.Linkname:
		return fmt.Errorf("link %q in the tar stream, %q in the table of contents", h.Linkname, m.Linkname)
	case (typ == ztoc.TypeChar || typ == ztoc.TypeBlock) && (h.Devmajor != m.Devmajor || h.Devminor != m.Devminor):
		return fmt.Errorf("device %d:%d in the tar stream, %d:%d in the table of contents", h.Devmajor, h.Devminor, m.Devmajor, m.Devminor)
	}
	if got, want := NormalizeTime(h.ModTime, round), m.ModTime; !got.Equal(want) {
		return fmt.Errorf("modification time %s in the tar stream, %s in the table of contents", got, want)
	}
	if got, want := xattrsOf(h.PAXRecords), m.Xattrs(); !maps.Equal(got, want) {
		return fmt.Errorf("xattrs %q in the tar stream, %q in the table of contents", got, want)
	}
	return nil
}

// NormalizeTime is a modification time as a TOC keeps it: rounded to round
// (when positive), with the zero time and the Unix epoch both the epoch.
func NormalizeTime(t time.Time, round time.Duration) time.Time {
	if t.IsZero() || t.Unix() == 0 && t.Nanosecond() == 0 {
		return time.Unix(0, 0).UTC()
	}
	if round > 0 {
		t = t.Round(round)
	}
	return t.UTC()
}

// TypeOf names a tar type flag as the file table does.
func TypeOf(flag byte) (string, error) {
	switch flag {
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old archives
		return ztoc.TypeReg, nil
	case tar.TypeDir:
		return ztoc.TypeDir, nil
	case tar.TypeSymlink:
		return ztoc.TypeSymlink, nil
	case tar.TypeLink:
		return ztoc.TypeHardlink, nil
	case tar.TypeChar:
		return ztoc.TypeChar, nil
	case tar.TypeBlock:
		return ztoc.TypeBlock, nil
	case tar.TypeFifo:
		return ztoc.TypeFifo, nil
	}
	return "", fmt.Errorf("tar entry of type %q, which the table of contents cannot describe", flag)
}

// xattrsOf returns the extended attributes among PAX records (nil for none).
func xattrsOf(pax map[string]string) map[string]string {
	m := &ztoc.FileMetadata{PAXRecords: pax}
	return m.Xattrs()
}

// countWriter counts what it passes on and keeps the first error.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
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
