package tocindex

import (
	"bytes"
	"errors"
	"io"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/ztoc"
)

// storedCodec is a format whose regions are stored: what a region
// "decompresses" to is its bytes.
type storedCodec struct{}

func (storedCodec) Name() string               { return "stored" }
func (storedCodec) CheckRegion(b []byte) error { return nil }
func (storedCodec) DecodePrefix(b, dst []byte) error {
	if len(b) < len(dst) {
		return io.ErrUnexpectedEOF
	}
	copy(dst, b)
	return nil
}
func (storedCodec) DecodeAll(b []byte, w io.Writer) error { _, err := w.Write(b); return err }

// storedLayer is a blob "hello world" + "lazy" in two regions, with the
// files a (5 bytes at 0) and b (4 bytes at 11).
func storedLayer() (Layer, []byte) {
	blob := []byte("hello worldlazy")
	return Layer{
		Format: "stored", BlobSize: int64(len(blob)), Codec: storedCodec{}, Tail: int64(len(blob)),
		Entries: []ztoc.FileMetadata{{Name: "a", Type: ztoc.TypeReg, UncompressedSize: 5}, {Name: "d", Type: ztoc.TypeDir}, {Name: "b", Type: ztoc.TypeReg, UncompressedSize: 4}},
		Chunks: []Chunk{
			{Entry: 0, Size: 5, Offset: 0, Digest: digest.FromString("hello")},
			{Entry: 2, Size: 4, Offset: 11, Digest: digest.FromString("lazy")},
		},
	}, blob
}

func TestBuildPlacesFiles(t *testing.T) {
	l, blob := storedLayer()
	x, err := Build(l, Options{SpanTarget: 1})
	if err != nil {
		t.Fatal(err)
	}
	if x.NumSpans() != 2 || x.VirtualSize() != 9 {
		t.Fatalf("%d spans, virtual size %d; want 2, 9", x.NumSpans(), x.VirtualSize())
	}
	if e := x.Entries()[2]; e.UncompressedOffset != 5 {
		t.Errorf("b at %d of the virtual stream, want 5", e.UncompressedOffset)
	}
	for id, want := range []string{"hello", "lazy"} {
		c0, c1 := x.CompressedRange(id)
		got, err := x.Inflate(id, blob[c0:c1], nil)
		if err != nil || string(got) != want {
			t.Errorf("Inflate(%d) = %q, %v; want %q", id, got, err, want)
		}
	}
	bad := bytes.Clone(blob)
	bad[1] = 'a'
	if _, err := x.Inflate(0, bad[:11], nil); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Inflate of changed data = %v, want ErrCorrupt", err)
	}
}

func TestBuildRejects(t *testing.T) {
	for name, edit := range map[string]func(l *Layer){
		"chunk past the blob":    func(l *Layer) { l.Chunks[1].Offset = 20 },
		"overlapping chunks":     func(l *Layer) { l.Chunks[1].Offset, l.Chunks[1].Inner = 0, 2 },
		"gap in a file":          func(l *Layer) { l.Chunks[0].Size = 4; l.Chunks[0].Digest = digest.FromString("hell") },
		"file without chunks":    func(l *Layer) { l.Chunks = l.Chunks[:1] },
		"chunk of a directory":   func(l *Layer) { l.Chunks[1].Entry = 1 },
		"chunk out of order":     func(l *Layer) { l.Chunks[0].FileOffset = 1 },
		"digest not sha256":      func(l *Layer) { l.Chunks[0].Digest = "md5:abc" },
		"digest without a colon": func(l *Layer) { l.Chunks[0].Digest = "" },
		"negative size":          func(l *Layer) { l.Entries[0].UncompressedSize = -1 },
		"unknown type":           func(l *Layer) { l.Entries[1].Type = "door" },
		"data of a directory":    func(l *Layer) { l.Entries[1].UncompressedSize = 3 },
		"tail past the blob":     func(l *Layer) { l.Tail = 99 },
		"wrong tail bytes":       func(l *Layer) { l.TailBytes = []byte("x") },
	} {
		l, _ := storedLayer()
		edit(&l)
		if _, err := Build(l, Options{}); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Build = %v, want ErrMalformed", name, err)
		}
	}
	l, _ := storedLayer()
	if _, err := Build(l, Options{SpanTarget: 1, Limits: ztoc.Limits{MaxSpans: 1}}); !errors.Is(err, ztoc.ErrLimit) {
		t.Errorf("Build over MaxSpans = %v, want ErrLimit", err)
	}
}

func TestSpanOfSkipsEmptySpans(t *testing.T) {
	l, blob := storedLayer()
	l.Boundaries = []int64{5} // " world": a region without data between the files
	x, err := Build(l, Options{SpanTarget: 1})
	if err != nil {
		t.Fatal(err)
	}
	if x.NumSpans() != 3 {
		t.Fatalf("%d spans, want 3", x.NumSpans())
	}
	if u0, u1 := x.UncompressedRange(1); u0 != 5 || u1 != 5 {
		t.Errorf("the header span covers [%d, %d) of the virtual stream, want [5, 5)", u0, u1)
	}
	for off, want := range map[int64]int{0: 0, 4: 0, 5: 2, 8: 2} {
		if got := x.SpanOf(off); got != want {
			t.Errorf("SpanOf(%d) = %d, want %d", off, got, want)
		}
	}
	for off, want := range map[int64]int{0: 0, 5: 1, 10: 1, 11: 2, 14: 2} {
		if got := x.CompressedSpanOf(off); got != want {
			t.Errorf("CompressedSpanOf(%d) = %d, want %d", off, got, want)
		}
	}
	sums := make([][32]byte, 3)
	if err := x.TrustSpans(sums); err != nil {
		t.Fatal(err)
	}
	if err := x.Verify(0, blob[:5]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Verify against a trusted digest that differs = %v, want ErrCorrupt", err)
	}
}
