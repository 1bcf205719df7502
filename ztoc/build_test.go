package ztoc

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// testEntry is one tar entry of a generated test layer.
type testEntry struct {
	hdr  tar.Header
	data []byte
}

// genEntries makes a deterministic layer of every entry type: small and
// large files of compressible and random content, long names, PAX xattrs,
// hard links, symlinks, devices, fifos.
func genEntries(seed uint64, nfiles int, bigSize int) []testEntry {
	rng := rand.New(rand.NewPCG(seed, 7))
	mt := time.Unix(1700000000, 123456789).UTC()
	var es []testEntry
	add := func(h tar.Header, data []byte) {
		h.ModTime = mt
		h.Format = tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		es = append(es, testEntry{hdr: h, data: data})
	}
	add(tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(tar.Header{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(tar.Header{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	words := []string{"alpha", "beta", "gamma", "delta", "layer", "span", "checkpoint", "registry", "\n", "func", "{", "}"}
	for i := 0; i < nfiles; i++ {
		var data []byte
		switch i % 3 {
		case 0: // text-like
			var sb strings.Builder
			for sb.Len() < 100+rng.IntN(20000) {
				sb.WriteString(words[rng.IntN(len(words))])
				sb.WriteByte(' ')
			}
			data = []byte(sb.String())
		case 1: // random
			data = make([]byte, rng.IntN(30000))
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
		default: // empty or block-aligned
			data = bytes.Repeat([]byte{byte(i)}, 512*(i%4))
		}
		add(tar.Header{Name: fmt.Sprintf("./etc/file-%04d.txt", i), Typeflag: tar.TypeReg, Mode: 0o644, Uid: i % 7, Gid: 1000}, data)
	}
	big := make([]byte, bigSize)
	for j := 0; j < len(big); j += 8 {
		v := rng.Uint64()
		if j%(1<<16) < 1<<15 { // half compressible
			v &= 0x0f0f0f0f0f0f0f0f
		}
		for k := 0; k < 8 && j+k < len(big); k++ {
			big[j+k] = byte(v >> (8 * k))
		}
	}
	add(tar.Header{Name: "./bin/big", Typeflag: tar.TypeReg, Mode: 0o4755}, big)
	add(tar.Header{Name: "./bin/hard", Typeflag: tar.TypeLink, Linkname: "./bin/big"}, nil)
	add(tar.Header{Name: "./bin/sym", Typeflag: tar.TypeSymlink, Linkname: "big", Mode: 0o777}, nil)
	add(tar.Header{Name: "./dev-null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666}, nil)
	add(tar.Header{Name: "./dev-sda", Typeflag: tar.TypeBlock, Devmajor: 8, Devminor: 0, Mode: 0o660}, nil)
	add(tar.Header{Name: "./fifo", Typeflag: tar.TypeFifo, Mode: 0o600}, nil)
	long := "./" + strings.Repeat("very-long-directory-name/", 12) + "file"
	add(tar.Header{Name: long, Typeflag: tar.TypeReg, Mode: 0o600,
		PAXRecords: map[string]string{"SCHILY.xattr.user.test": "value", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}}, []byte("long name content"))
	add(tar.Header{Name: "./sticky/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil)
	return es
}

func tarBytes(t testing.TB, es []testEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzipMembers compresses data at level, split into members of at most
// memberSize bytes (0: one member).
func gzipMembers(t testing.TB, data []byte, level, memberSize int) []byte {
	t.Helper()
	var out bytes.Buffer
	if memberSize <= 0 {
		memberSize = len(data) + 1
	}
	for len(data) > 0 {
		n := min(memberSize, len(data))
		zw, err := gzip.NewWriterLevel(&out, level)
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(data[:n])
		zw.Close()
		data = data[n:]
	}
	return out.Bytes()
}

func sha(b []byte) digest.Digest { return digest.FromBytes(b) }

// checkLayer builds a zTOC of blob and reads every file back through it.
func checkLayer(t *testing.T, es []testEntry, raw, blob []byte, spanSize int64) *LayerIndex {
	t.Helper()
	ctx := context.Background()
	var spansSeen []SpanID
	res, err := Build(ctx, bytes.NewReader(blob), BuildOptions{SpanSize: spanSize, OnSpan: func(id SpanID, b []byte) error {
		spansSeen = append(spansSeen, id)
		return nil
	}})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if res.Digest != sha(blob) || res.Size != int64(len(blob)) {
		t.Errorf("Build digest/size = %s/%d, want %s/%d", res.Digest, res.Size, sha(blob), len(blob))
	}
	if res.DiffID != sha(raw) || res.UncompressedSize != int64(len(raw)) {
		t.Errorf("Build DiffID/size = %s/%d, want %s/%d", res.DiffID, res.UncompressedSize, sha(raw), len(raw))
	}
	if len(res.Ztoc.TOC.FileMetadata) != len(es) {
		t.Fatalf("TOC has %d entries, want %d", len(res.Ztoc.TOC.FileMetadata), len(es))
	}
	if int(res.Ztoc.CompressionInfo.MaxSpanID)+1 != len(spansSeen) {
		t.Errorf("OnSpan saw %d spans, zTOC has %d", len(spansSeen), res.Ztoc.CompressionInfo.MaxSpanID+1)
	}
	data, err := Marshal(res.Ztoc)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	x, err := OpenLayerIndex(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("OpenLayerIndex: %v", err)
	}
	src := &countingSource{inner: ReaderAtSource(x, bytes.NewReader(blob))}
	r := NewReader(x, src, NewSpanCache(1<<30))
	for i, e := range es {
		m := x.Entries()[i]
		if m.Name != e.hdr.Name || m.Mode != e.hdr.Mode || !m.ModTime.Equal(e.hdr.ModTime) {
			t.Errorf("entry %d = %q mode %o mtime %v, want %q %o %v", i, m.Name, m.Mode, m.ModTime, e.hdr.Name, e.hdr.Mode, e.hdr.ModTime)
		}
		if e.hdr.Typeflag != tar.TypeReg {
			continue
		}
		f, err := r.Open(e.hdr.Name)
		if err != nil {
			t.Fatalf("Open(%q): %v", e.hdr.Name, err)
		}
		got := make([]byte, len(e.data)+10)
		n, err := f.ReadAt(got, 0)
		if n != len(e.data) || (err != io.EOF && err != nil) || !bytes.Equal(got[:n], e.data) {
			t.Fatalf("read %q: %d bytes, %v; want %d bytes equal to the tar's", e.hdr.Name, n, err, len(e.data))
		}
	}
	// The hard link reads as its target.
	if f, err := r.Open("bin/hard"); err != nil || f.Size() != int64(len(es[len(es)-8].data)) {
		t.Errorf("Open(hard link) = %v, size mismatch", err)
	}
	return x
}

type countingSource struct {
	inner SpanSource
	calls atomic.Int64
	spans atomic.Int64
}

func (c *countingSource) FetchSpans(ctx context.Context, a, b SpanID) ([][]byte, error) {
	c.calls.Add(1)
	c.spans.Add(int64(b - a + 1))
	return c.inner.FetchSpans(ctx, a, b)
}

func TestBuildAndReadBack(t *testing.T) {
	es := genEntries(1, 300, 3<<20)
	raw := tarBytes(t, es)
	for _, tc := range []struct {
		name     string
		blob     []byte
		spanSize int64
	}{
		{"gzip-6", gzipMembers(t, raw, 6, 0), 256 << 10},
		{"gzip-1", gzipMembers(t, raw, 1, 0), 512 << 10},
		{"gzip-9", gzipMembers(t, raw, 9, 0), 1 << 20},
		{"huffman-only", gzipMembers(t, raw, gzip.HuffmanOnly, 0), 300 << 10},
		{"stored", gzipMembers(t, raw, gzip.NoCompression, 0), 256 << 10},
		{"multi-member", gzipMembers(t, raw, 6, 700<<10), 256 << 10},
		{"tar", raw, 256 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := checkLayer(t, es, raw, tc.blob, tc.spanSize)
			if x.NumSpans() < 3 {
				t.Errorf("only %d spans; the test wants several", x.NumSpans())
			}
		})
	}
}

func TestReadSpansInOneFetch(t *testing.T) {
	es := genEntries(2, 10, 4<<20)
	raw := tarBytes(t, es)
	blob := gzipMembers(t, raw, 6, 0)
	res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{SpanSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewLayerIndex(res.Ztoc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	src := &countingSource{inner: ReaderAtSource(x, bytes.NewReader(blob))}
	r := NewReader(x, src, NewSpanCache(64<<20))
	f, err := r.Open("bin/big")
	if err != nil {
		t.Fatal(err)
	}
	m := f.Metadata()
	first, last := x.SpanOf(m.UncompressedOffset+1<<20), x.SpanOf(m.UncompressedOffset+2<<20-1)
	if last-first < 2 {
		t.Fatalf("1 MiB covers spans %d-%d; want at least 3", first, last)
	}
	buf := make([]byte, 1<<20)
	if _, err := f.ReadAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if got := src.calls.Load(); got != 1 {
		t.Errorf("reading spans %d-%d took %d fetches, want 1", first, last, got)
	}
	if got := src.spans.Load(); got != int64(last-first+1) {
		t.Errorf("fetched %d spans, want %d", got, last-first+1)
	}
	if !bytes.Equal(buf, es[len(es)-8].data[1<<20:2<<20]) {
		t.Error("bytes differ from the tar's")
	}
	// The same range again comes from memory.
	if _, err := f.ReadAt(buf, 1<<20); err != nil || src.calls.Load() != 1 {
		t.Errorf("second read: %v, %d fetches in all, want 1", err, src.calls.Load())
	}
}

func TestBuildErrors(t *testing.T) {
	es := genEntries(3, 20, 1<<20)
	raw := tarBytes(t, es)
	blob := gzipMembers(t, raw, 6, 0)
	crc := bytes.Clone(blob)
	crc[len(crc)-6] ^= 0xff
	badDeflate := bytes.Clone(blob)
	for i := 20; i < 60; i++ {
		badDeflate[i] = 0xff
	}
	hostile := func(name string) []byte {
		return gzipMembers(t, tarBytes(t, []testEntry{{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}}}), 6, 0)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0}, ErrUnsupportedCompression},
		{"garbage", []byte("this is not a layer at all, just some text that goes on"), ErrUnsupportedCompression},
		{"truncated", blob[:len(blob)/2], ErrTruncated},
		{"crc", crc, ErrChecksum},
		{"corrupt deflate", badDeflate, ErrCorruptStream},
		{"dotdot", hostile("../etc/passwd"), ErrInvalidEntry},
		{"inner dotdot", hostile("a/../../b"), ErrInvalidEntry},
	} {
		_, err := Build(context.Background(), bytes.NewReader(tc.in), BuildOptions{})
		if !errors.Is(err, tc.want) {
			t.Errorf("Build(%s) = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestSpanDigestMismatch(t *testing.T) {
	es := genEntries(4, 50, 1<<20)
	raw := tarBytes(t, es)
	blob := gzipMembers(t, raw, 6, 0)
	res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{SpanSize: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewLayerIndex(res.Ztoc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(blob)
	c0, c1 := x.SpanCompressedRange(1)
	bad[(c0+c1)/2] ^= 1
	r := NewReader(x, ReaderAtSource(x, bytes.NewReader(bad)), nil)
	u0, _ := x.SpanUncompressedRange(1)
	buf := make([]byte, 4096)
	if _, err := r.ReadAt(context.Background(), buf, u0); !errors.Is(err, ErrSpanDigest) {
		t.Errorf("ReadAt over a tampered span = %v, want ErrSpanDigest", err)
	}
	// Other spans still read correctly.
	if _, err := r.ReadAt(context.Background(), buf, 0); err != nil {
		t.Errorf("ReadAt span 0 = %v", err)
	}
	if !bytes.Equal(buf, raw[:4096]) {
		t.Error("span 0 bytes differ")
	}
}

// Every sha256 check above compares whole blobs; this keeps the helper honest.
func TestShaHelper(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	if sha([]byte("x")).Encoded() != fmt.Sprintf("%x", sum) {
		t.Fatal("sha helper broken")
	}
}

func TestCheckHeader(t *testing.T) {
	es := genEntries(5, 40, 1<<20)
	raw := tarBytes(t, es)
	blob := gzipMembers(t, raw, 6, 0)
	res, err := Build(context.Background(), bytes.NewReader(blob), BuildOptions{SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewLayerIndex(res.Ztoc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReader(x, ReaderAtSource(x, bytes.NewReader(blob)), nil)
	for i, m := range x.Entries() {
		if m.Type == TypeReg || m.Type == TypeHardlink {
			if err := r.CheckHeader(context.Background(), i, 0, 4096); err != nil {
				t.Errorf("CheckHeader(%q) of a good index = %v", m.Name, err)
			}
		}
	}
	// Moved offsets, a wrong size, a wrong mode: each is caught.
	for _, tc := range []struct {
		name   string
		change func(m *FileMetadata)
	}{
		{"offset moved by a block", func(m *FileMetadata) { m.UncompressedOffset += 512 }},
		{"offset moved into data", func(m *FileMetadata) { m.UncompressedOffset += 100 }},
		{"size", func(m *FileMetadata) { m.UncompressedSize-- }},
		{"mode", func(m *FileMetadata) { m.Mode = 0o4777 }},
	} {
		z := *res.Ztoc
		z.TOC.FileMetadata = append([]FileMetadata(nil), res.Ztoc.TOC.FileMetadata...)
		idx := -1
		for i, m := range z.TOC.FileMetadata {
			if m.Type == TypeReg && m.UncompressedSize > 1000 {
				idx = i
				break
			}
		}
		tc.change(&z.TOC.FileMetadata[idx])
		bad, err := NewLayerIndex(&z, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		br := NewReader(bad, ReaderAtSource(bad, bytes.NewReader(blob)), nil)
		if err := br.CheckHeader(context.Background(), idx, 0, 4096); !errors.Is(err, ErrHeaderMismatch) {
			t.Errorf("%s: CheckHeader = %v, want ErrHeaderMismatch", tc.name, err)
		}
	}
}

// TestTarShorterUncompressedSize: SOCI records an uncompressed tar layer's
// size only up to the end-of-archive marker while its spans cover the whole
// blob (GNU tar pads to 10 KiB records). Such a zTOC opens and serves every
// file.
func TestTarShorterUncompressedSize(t *testing.T) {
	es := genEntries(6, 20, 300<<10)
	raw := tarBytes(t, es)
	padded := append(bytes.Clone(raw), make([]byte, 9216)...)
	res, err := Build(context.Background(), bytes.NewReader(padded), BuildOptions{SpanSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	z := *res.Ztoc
	z.UncompressedArchiveSize = int64(len(raw)) // as SOCI writes it
	x, err := NewLayerIndex(&z, nil, 0)
	if err != nil {
		t.Fatalf("NewLayerIndex with SOCI's tar size: %v", err)
	}
	r := NewReader(x, ReaderAtSource(x, bytes.NewReader(padded)), nil)
	for i, e := range es {
		if e.hdr.Typeflag != tar.TypeReg {
			continue
		}
		got := make([]byte, len(e.data))
		if _, err := r.ReadFile(context.Background(), i, got, 0); err != nil && err != io.EOF {
			t.Fatalf("ReadFile(%q): %v", e.hdr.Name, err)
		}
		if !bytes.Equal(got, e.data) {
			t.Fatalf("%q differs", e.hdr.Name)
		}
	}
	z.UncompressedArchiveSize = int64(len(padded)) + 1
	if _, err := NewLayerIndex(&z, nil, 0); !errors.Is(err, ErrMalformed) {
		t.Errorf("NewLayerIndex with a tar size past the blob = %v, want ErrMalformed", err)
	}
}
