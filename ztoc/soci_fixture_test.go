package ztoc

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"testing"
)

// TestBuildMatchesSociFixture builds our zTOC of the layer SOCI v0.16.1
// indexed (testdata/soci_v0.16.1_*) and compares: the checkpoints (in, out,
// bits and windows) and span digests must be SOCI's exactly, the file table
// equal, and SOCI's zTOC must serve every file of the layer through our
// reader.
func TestBuildMatchesSociFixture(t *testing.T) {
	zb, err := os.ReadFile("testdata/soci_v0.16.1.ztoc")
	if err != nil {
		t.Fatal(err)
	}
	layer, err := os.ReadFile("testdata/soci_v0.16.1_layer.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	soci, err := Unmarshal(zb)
	if err != nil {
		t.Fatal(err)
	}
	sociCps, err := ParseCheckpoints(bytes.NewReader(soci.CompressionInfo.Checkpoints), int64(len(soci.CompressionInfo.Checkpoints)))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Build(context.Background(), bytes.NewReader(layer), BuildOptions{SpanSize: sociCps.SpanSize})
	if err != nil {
		t.Fatal(err)
	}
	ours := res.Ztoc
	if !bytes.Equal(ours.CompressionInfo.Checkpoints, soci.CompressionInfo.Checkpoints) {
		ourCps, _ := ParseCheckpoints(bytes.NewReader(ours.CompressionInfo.Checkpoints), int64(len(ours.CompressionInfo.Checkpoints)))
		t.Fatalf("checkpoint blobs differ: ours %+v, SOCI's %+v", ourCps.Points, sociCps.Points)
	}
	if len(ours.CompressionInfo.SpanDigests) != len(soci.CompressionInfo.SpanDigests) {
		t.Fatalf("%d span digests, SOCI has %d", len(ours.CompressionInfo.SpanDigests), len(soci.CompressionInfo.SpanDigests))
	}
	for i := range ours.CompressionInfo.SpanDigests {
		if ours.CompressionInfo.SpanDigests[i] != soci.CompressionInfo.SpanDigests[i] {
			t.Errorf("span %d digest %s, SOCI's %s", i, ours.CompressionInfo.SpanDigests[i], soci.CompressionInfo.SpanDigests[i])
		}
	}
	if err := CompareTOC(ours.TOC.FileMetadata, soci.TOC.FileMetadata); err != nil {
		t.Errorf("file tables differ: %v", err)
	}

	// SOCI's zTOC serves the layer through our reader.
	x, err := OpenLayerIndex(bytes.NewReader(zb), int64(len(zb)))
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(x, ReaderAtSource(x, bytes.NewReader(layer)), nil)
	gz, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(gz)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range x.Entries() {
		if m.Type != TypeReg {
			continue
		}
		got := make([]byte, m.UncompressedSize)
		if _, err := r.ReadFile(context.Background(), i, got, 0); err != nil && err != io.EOF {
			t.Fatalf("ReadFile(%q): %v", m.Name, err)
		}
		if want := raw[m.UncompressedOffset : m.UncompressedOffset+m.UncompressedSize]; !bytes.Equal(got, want) {
			t.Errorf("%q through SOCI's zTOC differs from the layer", m.Name)
		}
	}
}
