package compat

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"testing"

	sociztoc "github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc"
)

// sociBuildTool is the build tool identifier SOCI's CLI writes.
const sociBuildTool = "AWS SOCI CLI v0.2"

var (
	layersOnce sync.Once
	layersList []Layer
	layersErr  error
)

// testLayers returns the generated layer shapes (once per test binary).
func testLayers(tb testing.TB) []Layer {
	tb.Helper()
	layersOnce.Do(func() { layersList, layersErr = Layers() })
	if layersErr != nil {
		tb.Fatalf("generate layers: %v", layersErr)
	}
	return layersList
}

// tarTruth is what a layer holds, read with the standard library only.
type tarTruth struct {
	blob []byte // the layer blob as stored
	raw  []byte // the whole uncompressed tar stream
	// files maps the name of every regular file, as spelled in the tar,
	// to its content; hard links map to their target's content.
	files map[string][]byte
	// kinds maps every entry name to its tar type flag.
	kinds map[string]byte
	// endOfArchive is the offset just after the end-of-archive marker
	// (where archive/tar stops reading); len(raw) when nothing follows.
	endOfArchive int64
	// members holds the uncompressed offset at which each gzip member
	// starts (nil for an uncompressed layer).
	members []int64
}

// readTruth reads l with compress/gzip and archive/tar.
func readTruth(tb testing.TB, l Layer) *tarTruth {
	tb.Helper()
	blob, err := os.ReadFile(l.Path)
	if err != nil {
		tb.Fatal(err)
	}
	tr := &tarTruth{blob: blob, files: make(map[string][]byte), kinds: make(map[string]byte)}
	if l.Uncompressed {
		tr.raw = blob
	} else {
		var out bytes.Buffer
		br := bufio.NewReader(bytes.NewReader(blob))
		zr, err := gzip.NewReader(br)
		if err != nil {
			tb.Fatalf("gzip: %v", err)
		}
		for {
			tr.members = append(tr.members, int64(out.Len()))
			zr.Multistream(false)
			if _, err := io.Copy(&out, zr); err != nil {
				tb.Fatalf("gunzip member %d: %v", len(tr.members), err)
			}
			if err := zr.Reset(br); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				tb.Fatalf("gzip member %d: %v", len(tr.members)+1, err)
			}
		}
		tr.raw = out.Bytes()
	}
	cr := &countingReader{r: bytes.NewReader(tr.raw)}
	r := tar.NewReader(cr)
	var links [][2]string
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("tar: %v", err)
		}
		tr.kinds[h.Name] = h.Typeflag
		switch h.Typeflag {
		case tar.TypeReg:
			data, err := io.ReadAll(r)
			if err != nil {
				tb.Fatalf("tar %q: %v", h.Name, err)
			}
			tr.files[h.Name] = data
		case tar.TypeLink:
			links = append(links, [2]string{h.Name, h.Linkname})
		}
	}
	tr.endOfArchive = cr.n
	for _, l := range links {
		data, ok := tr.files[l[1]]
		if !ok {
			tb.Fatalf("tar: hard link %q to missing %q", l[0], l[1])
		}
		tr.files[l[0]] = data
	}
	return tr
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// memberStart returns the uncompressed offset of the gzip member holding
// uncompressed offset off (the member whose data starts at or before off).
func (tr *tarTruth) memberStart(off int64) int64 {
	i := sort.Search(len(tr.members), func(i int) bool { return tr.members[i] > off }) - 1
	if i < 0 {
		return 0
	}
	return tr.members[i]
}

// sociBuild builds l's zTOC with SOCI's builder (zlib through cgo for the
// checkpoints, archive/tar for the file table) and serializes it with
// SOCI's marshaler.
func sociBuild(tb testing.TB, l Layer, spanSize int64) (*sociztoc.Ztoc, []byte) {
	tb.Helper()
	algo := compression.Gzip
	if l.Uncompressed {
		algo = compression.Uncompressed
	}
	z, err := sociztoc.NewBuilder(sociBuildTool).BuildZtoc(l.Path, spanSize, sociztoc.WithCompression(algo))
	if err != nil {
		tb.Fatalf("SOCI BuildZtoc(%s): %v", l.Name, err)
	}
	r, desc, err := sociztoc.Marshal(z)
	if err != nil {
		tb.Fatalf("SOCI Marshal: %v", err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		tb.Fatal(err)
	}
	if got := digest.FromBytes(b); got != desc.Digest || int64(len(b)) != desc.Size {
		tb.Fatalf("SOCI Marshal descriptor %s/%d, bytes %s/%d", desc.Digest, desc.Size, got, len(b))
	}
	return z, b
}

// ourBuild builds l's zTOC with lazypull's builder and serializes it.
func ourBuild(tb testing.TB, l Layer, spanSize int64) (*ztoc.BuildResult, []byte) {
	tb.Helper()
	f, err := os.Open(l.Path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	res, err := ztoc.Build(context.Background(), f, ztoc.BuildOptions{SpanSize: spanSize})
	if err != nil {
		tb.Fatalf("Build(%s): %v", l.Name, err)
	}
	b, err := ztoc.Marshal(res.Ztoc)
	if err != nil {
		tb.Fatalf("Marshal: %v", err)
	}
	return res, b
}

// fromSOCI converts SOCI's file table to ours.
func fromSOCI(ms []sociztoc.FileMetadata) []ztoc.FileMetadata {
	out := make([]ztoc.FileMetadata, len(ms))
	for i, m := range ms {
		out[i] = ztoc.FileMetadata{
			Name:               m.Name,
			Type:               m.Type,
			UncompressedOffset: int64(m.UncompressedOffset),
			UncompressedSize:   int64(m.UncompressedSize),
			Linkname:           m.Linkname,
			Mode:               m.Mode,
			UID:                uint32(m.UID),
			GID:                uint32(m.GID),
			Uname:              m.Uname,
			Gname:              m.Gname,
			ModTime:            m.ModTime,
			Devmajor:           m.Devmajor,
			Devminor:           m.Devminor,
			PAXRecords:         m.PAXHeaders,
		}
	}
	return out
}

// sociEntryDiff names the first field in which two SOCI file entries
// differ ("" when none does). Times are compared as instants: SOCI's own
// Equal compares time.Time values with != and so tells a time read from a
// tar header from the same time read back from a zTOC.
func sociEntryDiff(a, b *sociztoc.FileMetadata) string {
	switch {
	case a.Name != b.Name:
		return "name"
	case a.Type != b.Type:
		return "type"
	case a.UncompressedOffset != b.UncompressedOffset:
		return "uncompressed offset"
	case a.UncompressedSize != b.UncompressedSize:
		return "uncompressed size"
	case a.TarHeaderOffset != b.TarHeaderOffset:
		return "tar header offset"
	case a.Linkname != b.Linkname:
		return "linkname"
	case a.Mode != b.Mode:
		return "mode"
	case a.UID != b.UID || a.GID != b.GID:
		return "uid/gid"
	case a.Uname != b.Uname || a.Gname != b.Gname:
		return "uname/gname"
	case !a.ModTime.Equal(b.ModTime):
		return "mod time"
	case a.Devmajor != b.Devmajor || a.Devminor != b.Devminor:
		return "device numbers"
	case len(a.PAXHeaders) != len(b.PAXHeaders):
		return "PAX headers"
	}
	for k, v := range a.PAXHeaders {
		if w, ok := b.PAXHeaders[k]; !ok || w != v {
			return "PAX header " + k
		}
	}
	return ""
}

// readAllThrough reads the whole uncompressed stream (size bytes) through
// r in chunks of chunk bytes.
func readAllThrough(ctx context.Context, r *ztoc.Reader, size int64, chunk int) ([]byte, error) {
	out := make([]byte, 0, size)
	buf := make([]byte, chunk)
	for off := int64(0); off < size; {
		n, err := r.ReadAt(ctx, buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("ReadAt(%d): %w", off, err)
		}
	}
	return out, nil
}
