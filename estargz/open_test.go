package estargz

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	stargz "github.com/containerd/stargz-snapshotter/estargz"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/tocindex/toctest"
	"github.com/lazypull/lazypull/ztoc"
)

// testBlob is an eStargz layer written by stargz-snapshotter's own
// converter (what ctr-remote, nerdctl and BuildKit run).
type testBlob struct {
	blob []byte
	toc  digest.Digest
	// tar is what the blob decompresses to; files its regular files.
	tar   []byte
	files map[string][]byte
	names []string
}

func makeBlob(t testing.TB, files []toctest.File, opts ...stargz.Option) *testBlob {
	t.Helper()
	src := toctest.Tar(files)
	opts = append([]stargz.Option{stargz.WithCompressionLevel(gzip.BestSpeed)}, opts...)
	b, err := stargz.Build(io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBlob{blob: blob, toc: b.TOCDigest(), files: map[string][]byte{}}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if tb.tar, err = io.ReadAll(zr); err != nil {
		t.Fatal(err)
	}
	if got := digest.FromBytes(tb.tar); got != b.DiffID() {
		t.Fatalf("DiffID %s, converter says %s", got, b.DiffID())
	}
	tr := tar.NewReader(bytes.NewReader(tb.tar))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		tb.names = append(tb.names, h.Name)
		if h.Typeflag == tar.TypeReg {
			tb.files[h.Name], _ = io.ReadAll(tr)
		}
	}
	return tb
}

func (tb *testBlob) open(t testing.TB, o Options) (*Layer, error) {
	t.Helper()
	size := int64(len(tb.blob))
	off, err := ParseFooter(tb.blob[size-FooterSize:], size)
	if err != nil {
		t.Fatalf("ParseFooter: %v", err)
	}
	return Open(tb.blob[off:], off, size, tb.toc, o)
}

func (tb *testBlob) want() tocindex.Want {
	return tocindex.Want{Digest: digest.FromBytes(tb.blob), DiffID: digest.FromBytes(tb.tar), TarSize: int64(len(tb.tar))}
}

func TestOpenServesEveryFile(t *testing.T) {
	for name, opts := range map[string][]stargz.Option{
		"default":      nil,
		"small chunks": {stargz.WithChunkSize(64 << 10)},
		"min chunk":    {stargz.WithMinChunkSize(256 << 10), stargz.WithChunkSize(128 << 10)},
		"prioritized":  {stargz.WithPrioritizedFiles([]string{"usr/bin/tool", "etc/hostname"})},
	} {
		t.Run(name, func(t *testing.T) {
			tb := makeBlob(t, toctest.Files(1, 400<<10), opts...)
			for _, target := range []int64{1, 8 << 20} {
				l, err := tb.open(t, Options{SpanTarget: target})
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if len(l.Entries()) != len(tb.names) {
					t.Fatalf("%d entries, the tar stream has %d", len(l.Entries()), len(tb.names))
				}
				for i, e := range l.Entries() {
					if e.Name != tb.names[i] {
						t.Fatalf("entry %d is %q, the tar stream's %q", i, e.Name, tb.names[i])
					}
				}
				got, err := toctest.Contents(l.Index, tb.blob)
				if err != nil {
					t.Fatalf("span target %d: %v", target, err)
				}
				if len(got) != len(tb.files) {
					t.Errorf("%d regular files, the tar stream has %d", len(got), len(tb.files))
				}
				for n, want := range tb.files {
					if !bytes.Equal(got[n], want) {
						t.Errorf("span target %d: %s: %d bytes, want %d equal bytes", target, n, len(got[n]), len(want))
					}
				}
				res, err := l.VerifyLayer(context.Background(), bytes.NewReader(tb.blob), tb.want())
				if err != nil {
					t.Fatalf("VerifyLayer: %v", err)
				}
				if res.DiffID != tb.want().DiffID {
					t.Errorf("DiffID %s", res.DiffID)
				}
				if name == "prioritized" && l.StartupEnd() == 0 {
					t.Errorf("StartupEnd = 0 with prioritized files")
				}
				if name == "default" && l.StartupEnd() != 0 {
					t.Errorf("StartupEnd = %d without prioritized files", l.StartupEnd())
				}
			}
		})
	}
}

func TestPrioritizedFilesComeFirst(t *testing.T) {
	tb := makeBlob(t, toctest.Files(2, 300<<10), stargz.WithPrioritizedFiles([]string{"usr/share/doc.txt"}))
	l, err := tb.open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range l.Entries() {
		if e.Name == "usr/share/doc.txt" && e.UncompressedOffset+e.UncompressedSize > l.StartupEnd() {
			t.Errorf("doc.txt ends at %d, the start-up range at %d", e.UncompressedOffset+e.UncompressedSize, l.StartupEnd())
		}
		if e.Name == "usr/bin/tool" && e.UncompressedOffset < l.StartupEnd() {
			t.Errorf("tool (not prioritized) at %d, inside the start-up range ending at %d", e.UncompressedOffset, l.StartupEnd())
		}
	}
}

func TestOpenRejects(t *testing.T) {
	tb := makeBlob(t, toctest.Files(3, 100<<10))
	size := int64(len(tb.blob))
	off, _ := ParseFooter(tb.blob[size-FooterSize:], size)
	tail := func() []byte { return bytes.Clone(tb.blob[off:]) }
	t.Run("other digest", func(t *testing.T) {
		if _, err := Open(tail(), off, size, digest.FromString("x"), Options{}); !errors.Is(err, ErrTOCDigest) {
			t.Errorf("Open = %v, want ErrTOCDigest", err)
		}
	})
	t.Run("tampered TOC", func(t *testing.T) {
		b := tail()
		b[30] ^= 0x10
		if _, err := Open(b, off, size, tb.toc, Options{}); err == nil {
			t.Errorf("Open of a tampered TOC member succeeded")
		}
	})
	t.Run("footer", func(t *testing.T) {
		for i := range FooterSize {
			if i >= 3 && i < 10 {
				continue // flags, mtime, XFL and OS of the gzip header are free
			}
			f := bytes.Clone(tb.blob[size-FooterSize:])
			f[i] ^= 0x01
			if got, err := ParseFooter(f, size); err == nil && got == off {
				t.Errorf("footer with byte %d changed still parsed", i)
			}
		}
		if _, err := Open(tail()[1:], off+1, size, tb.toc, Options{}); !errors.Is(err, ErrFormat) {
			t.Errorf("Open at the wrong offset = %v, want ErrFormat", err)
		}
	})
	t.Run("limits", func(t *testing.T) {
		if _, err := Open(tail(), off, size, tb.toc, Options{Limits: ztoc.Limits{MaxEntries: 3}}); !errors.Is(err, ztoc.ErrLimit) {
			t.Errorf("Open = %v, want ErrLimit", err)
		}
	})
}

func TestTamperedChunk(t *testing.T) {
	tb := makeBlob(t, toctest.Files(4, 300<<10))
	l, err := tb.open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := toctest.CheckTampered(l.Index, tb.blob, tb.want(), "usr/bin/tool", 100); err != nil {
		t.Error(err)
	}
}
