package ztoc

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"testing"
)

// FuzzBuild feeds arbitrary layers to the builder (gzip header, inflate and
// tar walk at once), with a span limit of 1 MiB. It must never panic; when
// it succeeds, Verify must accept the zTOC against the same bytes, and
// every regular file read through the zTOC must equal what stdlib gzip +
// archive/tar read sequentially from the same bytes.
func FuzzBuild(f *testing.F) {
	es := genEntries(9, 6, 40<<10)
	raw := tarBytes(f, es)
	f.Add(gzipMembers(f, raw, 6, 0))
	f.Add(gzipMembers(f, raw, 1, 20<<10))
	f.Add(gzipMembers(f, raw, gzip.NoCompression, 0))
	f.Add(raw)
	f.Add(gzipMembers(f, tarBytes(f, []testEntry{{hdr: tar.Header{Name: "../x", Typeflag: tar.TypeReg}}}), 6, 0))
	// A layer whose data is one deflate block of 2 MiB: past the span limit.
	bomb, err := io.ReadAll(bombLayer(f, 8130))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(bomb)
	f.Add(gzipMembers(f, raw, 6, 0)[:200])
	lim := Limits{MaxSpanSize: 1 << 20}
	f.Fuzz(func(t *testing.T, blob []byte) {
		res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{SpanSize: 16 << 10, Limits: lim})
		if err != nil {
			return
		}
		data, err := Marshal(res.Ztoc)
		if err != nil {
			t.Fatalf("Marshal of a built zTOC: %v", err)
		}
		x, err := OpenLayerIndex(bytes.NewReader(data), int64(len(data)), WithLimits(lim))
		if err != nil {
			t.Fatalf("OpenLayerIndex of a built zTOC: %v", err)
		}
		if _, err := x.Verify(context.Background(), bytes.NewReader(blob), VerifyOptions{Digest: res.Digest, DiffID: res.DiffID}); err != nil {
			t.Fatalf("Verify of a built zTOC against its layer: %v", err)
		}
		var stream io.Reader = bytes.NewReader(blob)
		if res.Ztoc.CompressionInfo.Algorithm == Gzip {
			zr, err := gzip.NewReader(stream)
			if err != nil {
				t.Fatalf("stdlib gzip rejects what Build accepted: %v", err)
			}
			stream = zr
		}
		tr := tar.NewReader(stream)
		r := NewReader(x, ReaderAtSource(x, bytes.NewReader(blob)), nil)
		for i := 0; ; i++ {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("archive/tar rejects entry %d that Build accepted: %v", i, err)
			}
			want, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("archive/tar read %q: %v", h.Name, err)
			}
			if x.Entries()[i].Type != TypeReg {
				continue
			}
			got := make([]byte, len(want))
			if n, err := r.ReadFile(context.Background(), i, got, 0); n != len(want) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadFile(%q) = %d, %v; want %d bytes", h.Name, n, err, len(want))
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("ReadFile(%q) differs from the sequential read", h.Name)
			}
		}
	})
}
