package zstdchunked

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/containers/storage/pkg/chunked/compressor"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/tocindex"
	"github.com/lazypull/lazypull/tocindex/toctest"
	"github.com/lazypull/lazypull/ztoc"
)

// testBlob is a zstd:chunked layer written by containers/storage's own
// compressor (what `podman push --compression-format zstd:chunked` runs).
type testBlob struct {
	blob        []byte
	annotations map[string]string
	tar         []byte
	files       []toctest.File
}

func makeBlob(t testing.TB, files []toctest.File) *testBlob {
	t.Helper()
	tb := &testBlob{tar: toctest.Tar(files), files: files, annotations: map[string]string{}}
	var out bytes.Buffer
	w, err := compressor.ZstdCompressor(&out, tb.annotations, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(tb.tar); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	tb.blob = out.Bytes()
	return tb
}

func (tb *testBlob) open(t testing.TB, o Options) (*Layer, error) {
	t.Helper()
	loc, ok, err := Locate(tb.annotations, int64(len(tb.blob)))
	if err != nil || !ok {
		t.Fatalf("Locate(%v) = %v, %v", tb.annotations, ok, err)
	}
	return Open(tb.blob[loc.TailOffset():], loc, int64(len(tb.blob)), digest.Digest(tb.annotations[AnnotationTOCDigest]), o)
}

func (tb *testBlob) want() tocindex.Want {
	return tocindex.Want{Digest: digest.FromBytes(tb.blob), DiffID: digest.FromBytes(tb.tar), TarSize: int64(len(tb.tar))}
}

func TestOpenServesEveryFile(t *testing.T) {
	for _, target := range []int64{1, 64 << 10, 4 << 20} {
		tb := makeBlob(t, toctest.Files(1, 600<<10))
		l, err := tb.open(t, Options{SpanTarget: target})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if l.TarSize != int64(len(tb.tar)) {
			t.Errorf("TarSize = %d, want %d", l.TarSize, len(tb.tar))
		}
		got, err := toctest.Contents(l.Index, tb.blob)
		if err != nil {
			t.Fatalf("span target %d: %v", target, err)
		}
		n := 0
		for _, f := range tb.files {
			if f.Type != tar.TypeReg {
				continue
			}
			n++
			if !bytes.Equal(got[f.Name], f.Data) {
				t.Errorf("span target %d: %s: %d bytes differ from the %d written", target, f.Name, len(got[f.Name]), len(f.Data))
			}
		}
		if len(got) != n {
			t.Errorf("span target %d: %d regular files served, want %d", target, len(got), n)
		}
		if target == 1 && l.NumSpans() < 40 {
			t.Errorf("span target 1: %d spans, want one per region", l.NumSpans())
		}
		res, err := l.VerifyLayer(context.Background(), bytes.NewReader(tb.blob), tb.want())
		if err != nil {
			t.Fatalf("VerifyLayer: %v", err)
		}
		if err := l.TrustSpans(res.SpanSums); err != nil {
			t.Fatal(err)
		}
		if _, err := toctest.Contents(l.Index, tb.blob); err != nil {
			t.Errorf("after TrustSpans: %v", err)
		}
	}
}

func TestFileTableMatchesTar(t *testing.T) {
	tb := makeBlob(t, toctest.Files(2, 200<<10))
	l, err := tb.open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(tb.tar))
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			if i != len(l.Entries()) {
				t.Errorf("%d entries, tar has %d", len(l.Entries()), i)
			}
			break
		}
		e := l.Entries()[i]
		typ, _ := tocindex.TypeOf(h.Typeflag)
		if e.Name != h.Name || e.Type != typ || e.Mode != h.Mode || !e.ModTime.Equal(h.ModTime) || int(e.UID) != h.Uid {
			t.Errorf("entry %d = %+v, tar header %+v", i, e, h)
		}
		if h.Name == "etc/config.txt" && e.Xattrs()["user.note"] != "hello" {
			t.Errorf("xattrs of %s = %v", h.Name, e.Xattrs())
		}
	}
}

func TestOpenRejects(t *testing.T) {
	tb := makeBlob(t, toctest.Files(3, 100<<10))
	size := int64(len(tb.blob))
	loc, _, _ := Locate(tb.annotations, size)
	toc := digest.Digest(tb.annotations[AnnotationTOCDigest])
	tail := func() []byte { return bytes.Clone(tb.blob[loc.TailOffset():]) }

	t.Run("tampered TOC", func(t *testing.T) {
		b := tail()
		b[skippableHdrSize+10] ^= 1
		if _, err := Open(b, loc, size, toc, Options{}); !errors.Is(err, ErrTOCDigest) {
			t.Errorf("Open = %v, want ErrTOCDigest", err)
		}
	})
	t.Run("other digest", func(t *testing.T) {
		if _, err := Open(tail(), loc, size, digest.FromString("x"), Options{}); !errors.Is(err, ErrTOCDigest) {
			t.Errorf("Open = %v, want ErrTOCDigest", err)
		}
	})
	t.Run("tampered tar-split", func(t *testing.T) {
		b := tail()
		b[loc.TarSplit.offset-loc.TailOffset()+3] ^= 1
		if _, err := Open(b, loc, size, toc, Options{}); !errors.Is(err, ErrTOCDigest) {
			t.Errorf("Open = %v, want ErrTOCDigest", err)
		}
	})
	t.Run("tampered footer", func(t *testing.T) {
		b := tail()
		b[len(b)-1] ^= 1
		if _, err := Open(b, loc, size, toc, Options{}); !errors.Is(err, ErrFormat) {
			t.Errorf("Open = %v, want ErrFormat", err)
		}
	})
	t.Run("entry limit", func(t *testing.T) {
		_, err := Open(tail(), loc, size, toc, Options{Limits: ztoc.Limits{MaxEntries: 5}})
		if !errors.Is(err, ztoc.ErrLimit) {
			t.Errorf("Open = %v, want ErrLimit", err)
		}
	})
	t.Run("bad annotations", func(t *testing.T) {
		for _, v := range []string{"1:2:3", "a:b:c:1", "-1:2:3:1", "10:10:10:2"} {
			if _, _, err := Locate(map[string]string{AnnotationTOCPosition: v}, size); !errors.Is(err, ErrFormat) {
				t.Errorf("Locate(%q) = %v, want ErrFormat", v, err)
			}
		}
	})
	t.Run("footer", func(t *testing.T) {
		got, err := LocateFooter(tb.blob[size-FooterSize:], size)
		if err != nil || got != loc {
			t.Errorf("LocateFooter = %+v, %v, want %+v", got, err, loc)
		}
	})
}

func TestTamperedChunk(t *testing.T) {
	tb := makeBlob(t, toctest.Files(4, 300<<10))
	l, err := tb.open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A byte flipped inside the data frames of usr/bin/tool: the frame
	// still walks (the damage is in a block's payload) or it does not;
	// either way nothing wrong is served.
	if err := toctest.CheckTampered(l.Index, tb.blob, tb.want(), "usr/bin/tool", 1000); err != nil {
		t.Error(err)
	}
}

func TestVerifyLayerChecksTheImage(t *testing.T) {
	tb := makeBlob(t, toctest.Files(5, 100<<10))
	l, err := tb.open(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for name, w := range map[string]tocindex.Want{
		"digest":   {Digest: digest.FromString("other"), TarSize: -1},
		"DiffID":   {Digest: tb.want().Digest, DiffID: digest.FromString("other"), TarSize: -1},
		"tar size": {Digest: tb.want().Digest, TarSize: 12},
	} {
		if _, err := l.VerifyLayer(context.Background(), bytes.NewReader(tb.blob), w); !errors.Is(err, tocindex.ErrVerify) {
			t.Errorf("%s: VerifyLayer = %v, want ErrVerify", name, err)
		}
	}
	if _, err := l.VerifyLayer(context.Background(), bytes.NewReader(tb.blob[:len(tb.blob)-1]), tb.want()); !errors.Is(err, tocindex.ErrVerify) {
		t.Errorf("short blob: VerifyLayer = %v, want ErrVerify", err)
	}
	if _, err := l.VerifyLayer(context.Background(), io.MultiReader(bytes.NewReader(tb.blob), bytes.NewReader([]byte{0})), tb.want()); !errors.Is(err, tocindex.ErrVerify) {
		t.Errorf("long blob: VerifyLayer = %v, want ErrVerify", err)
	}
}
