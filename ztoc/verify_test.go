package ztoc

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// fixture is a layer with the zTOC Build made of it.
type fixture struct {
	es   []testEntry
	raw  []byte // tar stream
	blob []byte // layer blob
	res  *BuildResult
}

func newFixture(t testing.TB, es []testEntry, blob func(raw []byte) []byte, spanSize int64) *fixture {
	t.Helper()
	f := &fixture{es: es, raw: tarBytes(t, es)}
	f.blob = blob(f.raw)
	res, err := Build(context.Background(), bytes.NewReader(f.blob), BuildOptions{SpanSize: spanSize})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	f.res = res
	return f
}

func (f *fixture) opts() VerifyOptions {
	return VerifyOptions{Digest: sha(f.blob), DiffID: sha(f.raw)}
}

// cloneZtoc deep-copies z, so that tests can edit it.
func cloneZtoc(z *Ztoc) *Ztoc {
	c := *z
	c.TOC.FileMetadata = append([]FileMetadata(nil), z.TOC.FileMetadata...)
	for i := range c.TOC.FileMetadata {
		c.TOC.FileMetadata[i].PAXRecords = maps.Clone(c.TOC.FileMetadata[i].PAXRecords)
	}
	c.CompressionInfo.SpanDigests = append([]digest.Digest(nil), z.CompressionInfo.SpanDigests...)
	c.CompressionInfo.Checkpoints = bytes.Clone(z.CompressionInfo.Checkpoints)
	return &c
}

// editCheckpoints rewrites z's checkpoint blob after edit changed the
// points and windows (each window a full 32 KiB).
func editCheckpoints(t testing.TB, z *Ztoc, edit func(points []Checkpoint, windows [][]byte) ([]Checkpoint, [][]byte)) {
	t.Helper()
	ci := &z.CompressionInfo
	tab, err := ParseCheckpoints(bytes.NewReader(ci.Checkpoints), int64(len(ci.Checkpoints)))
	if err != nil {
		t.Fatal(err)
	}
	points := append([]Checkpoint(nil), tab.Points...)
	windows := make([][]byte, len(points))
	for i := range windows {
		if windows[i], err = tab.Window(i, make([]byte, WindowSize)); err != nil {
			t.Fatal(err)
		}
	}
	points, windows = edit(points, windows)
	var buf bytes.Buffer
	if err := EncodeCheckpoints(&buf, tab.SpanSize, points, windows); err != nil {
		t.Fatal(err)
	}
	ci.Checkpoints = buf.Bytes()
}

// resign recomputes every span digest of z from blob: a forger who edits
// checkpoints can always make the digests match the real bytes.
func resign(t testing.TB, z *Ztoc, blob []byte) {
	t.Helper()
	ci := &z.CompressionInfo
	tab, err := ParseCheckpoints(bytes.NewReader(ci.Checkpoints), int64(len(ci.Checkpoints)))
	if err != nil {
		t.Fatal(err)
	}
	ci.SpanDigests = make([]digest.Digest, tab.NumSpans())
	for i := range ci.SpanDigests {
		ci.SpanDigests[i] = digest.FromString("placeholder")
	}
	ci.MaxSpanID = SpanID(tab.NumSpans() - 1)
	x, err := NewLayerIndex(z, nil, 0)
	if err != nil {
		t.Fatalf("NewLayerIndex of the edited zTOC: %v", err)
	}
	z.CompressionInfo.SpanDigests = z.CompressionInfo.SpanDigests[:0]
	for i := 0; i < x.NumSpans(); i++ {
		c0, c1 := x.SpanCompressedRange(SpanID(i))
		z.CompressionInfo.SpanDigests = append(z.CompressionInfo.SpanDigests, sha(blob[c0:c1]))
	}
	z.CompressionInfo.MaxSpanID = SpanID(x.NumSpans() - 1)
}

// viaWire marshals z and opens it as a serialized zTOC, as the store does.
func viaWire(t testing.TB, z *Ztoc) (*LayerIndex, error) {
	t.Helper()
	b, err := Marshal(z)
	if err != nil {
		return nil, err
	}
	return OpenLayerIndex(bytes.NewReader(b), int64(len(b)))
}

func mustVerify(t *testing.T, x *LayerIndex, blob []byte, opts VerifyOptions) *VerifyResult {
	t.Helper()
	res, err := x.Verify(context.Background(), bytes.NewReader(blob), opts)
	if err != nil {
		t.Fatalf("Verify of a genuine zTOC: %v", err)
	}
	return res
}

func TestVerifyAcceptsGenuineLayers(t *testing.T) {
	es := genEntries(21, 120, 1<<20)
	for _, tc := range []struct {
		name     string
		blob     func([]byte) []byte
		spanSize int64
	}{
		{"gzip-6", func(r []byte) []byte { return gzipMembers(t, r, 6, 0) }, 64 << 10},
		{"gzip-9", func(r []byte) []byte { return gzipMembers(t, r, 9, 0) }, 128 << 10},
		{"huffman-only", func(r []byte) []byte { return gzipMembers(t, r, gzip.HuffmanOnly, 0) }, 100 << 10},
		{"stored", func(r []byte) []byte { return gzipMembers(t, r, gzip.NoCompression, 0) }, 64 << 10},
		{"multi-member", func(r []byte) []byte { return gzipMembers(t, r, 6, 150<<10) }, 64 << 10},
		{"tar", func(r []byte) []byte { return r }, 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, es, tc.blob, tc.spanSize)
			x, err := viaWire(t, f.res.Ztoc)
			if err != nil {
				t.Fatal(err)
			}
			res := mustVerify(t, x, f.blob, f.opts())
			want := VerifyResult{Digest: sha(f.blob), Size: int64(len(f.blob)), DiffID: sha(f.raw), UncompressedSize: int64(len(f.raw)), Entries: len(es)}
			if x.cps != nil {
				want.Checkpoints = x.NumSpans()
			}
			if *res != want {
				t.Errorf("Verify = %+v, want %+v", *res, want)
			}
			if x.NumSpans() < 4 {
				t.Errorf("only %d spans; the test wants several", x.NumSpans())
			}
		})
	}
}

// TestVerifyAcceptsOtherPlacements: Verify checks the checkpoints a zTOC
// has, wherever its builder put them: fewer checkpoints (every other one
// dropped, as a larger span size would), SOCI's v1 blob without
// checkpoint 0, and SOCI's uncompressed size that stops at the
// end-of-archive marker.
func TestVerifyAcceptsOtherPlacements(t *testing.T) {
	f := newFixture(t, genEntries(22, 80, 512<<10), func(r []byte) []byte {
		return gzipMembers(t, append(bytes.Clone(r), make([]byte, 8192)...), 6, 0) // record padding after the marker
	}, 64<<10)

	sparse := cloneZtoc(f.res.Ztoc)
	editCheckpoints(t, sparse, func(p []Checkpoint, w [][]byte) ([]Checkpoint, [][]byte) {
		var p2 []Checkpoint
		var w2 [][]byte
		for i := range p {
			if i%2 == 0 {
				p2, w2 = append(p2, p[i]), append(w2, w[i])
			}
		}
		return p2, w2
	})
	resign(t, sparse, f.blob)

	// v1 omits checkpoint 0 (taken as in 10, out 0: a 10-byte gzip header);
	// the count in the header still includes it.
	v1 := cloneZtoc(f.res.Ztoc)
	blob := v1.CompressionInfo.Checkpoints
	v1.CompressionInfo.Checkpoints = append(append([]byte{}, blob[:checkpointHeaderSize]...), blob[checkpointHeaderSize+checkpointRecordSize:]...)

	soci := cloneZtoc(f.res.Ztoc)
	tarEnd := int64(len(tarBytes(t, f.es)))
	soci.UncompressedArchiveSize = tarEnd
	soci.CompressionInfo.Checkpoints = bytes.Clone(f.res.Ztoc.CompressionInfo.Checkpoints)

	for name, z := range map[string]*Ztoc{"every other checkpoint": sparse, "v1 blob": v1, "SOCI's uncompressed size": soci} {
		t.Run(name, func(t *testing.T) {
			x, err := viaWire(t, z)
			if err != nil {
				t.Fatal(err)
			}
			raw := append(tarBytes(t, f.es), make([]byte, 8192)...)
			mustVerify(t, x, f.blob, VerifyOptions{Digest: sha(f.blob), DiffID: sha(raw)})
		})
	}
}

// TestVerifySociZtoc: the zTOC SOCI v0.16.1 built (testdata) verifies
// against its layer.
func TestVerifySociZtoc(t *testing.T) {
	zb, err := os.ReadFile("testdata/soci_v0.16.1.ztoc")
	if err != nil {
		t.Fatal(err)
	}
	layer, err := os.ReadFile("testdata/soci_v0.16.1_layer.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	x, err := OpenLayerIndex(bytes.NewReader(zb), int64(len(zb)))
	if err != nil {
		t.Fatal(err)
	}
	res := mustVerify(t, x, layer, VerifyOptions{Digest: sha(layer)})
	if res.Entries != len(x.Entries()) || res.Checkpoints != x.NumSpans() {
		t.Errorf("Verify checked %d entries and %d checkpoints, want %d and %d", res.Entries, res.Checkpoints, len(x.Entries()), x.NumSpans())
	}
}

// tamperFixture is a layer with the entries the tampering tests edit: a
// setuid-free binary with a hard link to it, a file with xattrs, text that
// repeats across spans (so windows matter).
func tamperFixture(t testing.TB) *fixture {
	es := genEntries(23, 150, 256<<10)
	mt := time.Unix(1700000000, 0).UTC()
	es = append(es,
		testEntry{hdr: tar.Header{Name: "./usr/bin/tool", Typeflag: tar.TypeReg, Mode: 0o755, Uid: 1000, Gid: 1000, ModTime: mt, Size: 5000, Format: tar.FormatPAX}, data: bytes.Repeat([]byte("tool "), 1000)},
		testEntry{hdr: tar.Header{Name: "./usr/bin/tool-link", Typeflag: tar.TypeLink, Linkname: "./usr/bin/tool", Mode: 0o755, Uid: 1000, Gid: 1000, ModTime: mt, Format: tar.FormatPAX}},
	)
	return newFixture(t, es, func(r []byte) []byte { return gzipMembers(t, r, 6, 0) }, 64<<10)
}

// entryNamed returns the index of the entry named name in z.
func entryNamed(t testing.TB, z *Ztoc, name string) int {
	t.Helper()
	for i, m := range z.TOC.FileMetadata {
		if m.Name == name {
			return i
		}
	}
	t.Fatalf("no entry %q", name)
	return -1
}

// TestVerifyCatchesTampering edits a genuine zTOC in every way a forger
// could (re-signing span digests where the edit moves spans) and checks
// that Verify names the difference, and that the per-entry header check
// (CheckEntry) catches every edit of the file table before Verify.
func TestVerifyCatchesTampering(t *testing.T) {
	f := tamperFixture(t)
	z0 := f.res.Ztoc
	tool := entryNamed(t, z0, "./usr/bin/tool")
	link := entryNamed(t, z0, "./usr/bin/tool-link")
	big := entryNamed(t, z0, "./bin/big")
	xattrs := -1
	for i, m := range z0.TOC.FileMetadata {
		if len(m.Xattrs()) > 0 {
			xattrs = i
		}
	}
	// A checkpoint whose window's last bytes hold text, and the span after
	// it.
	k := 2
	entry := func(i int, edit func(m *FileMetadata)) func(z *Ztoc) {
		return func(z *Ztoc) { edit(&z.TOC.FileMetadata[i]) }
	}
	points := func(edit func(p []Checkpoint)) func(z *Ztoc) {
		return func(z *Ztoc) {
			editCheckpoints(t, z, func(p []Checkpoint, w [][]byte) ([]Checkpoint, [][]byte) { edit(p); return p, w })
			resign(t, z, f.blob)
		}
	}
	for _, tc := range []struct {
		name      string
		edit      func(z *Ztoc)
		entry     int    // entry whose header check must fail; -1: none
		wantInVer string // part of Verify's message
	}{
		{"window byte", func(z *Ztoc) {
			editCheckpoints(t, z, func(p []Checkpoint, w [][]byte) ([]Checkpoint, [][]byte) { w[k][WindowSize-100] ^= 0x20; return p, w })
		}, -1, "window differs"},
		{"window first used byte", func(z *Ztoc) {
			editCheckpoints(t, z, func(p []Checkpoint, w [][]byte) ([]Checkpoint, [][]byte) { w[k][0] ^= 1; return p, w })
		}, -1, "window differs"},
		{"checkpoint out", points(func(p []Checkpoint) { p[k].Out += 1 }), -1, "says out"},
		{"checkpoint bits", points(func(p []Checkpoint) { p[k].Bits = (p[k].Bits + 1) % 8 }), -1, "not a deflate block boundary"},
		{"checkpoint in", points(func(p []Checkpoint) { p[k].In += 3 }), -1, "not a deflate block boundary"},
		{"span digest", func(z *Ztoc) { z.CompressionInfo.SpanDigests[k] = digest.FromString("x") }, -1, "span 2"},
		{"offset moved onto the next header", entry(tool, func(m *FileMetadata) { m.UncompressedOffset += 512 }), tool, "data offset"},
		{"moved data offset", entry(big, func(m *FileMetadata) { m.UncompressedOffset += 512; m.UncompressedSize -= 512 }), big, "data offset"},
		{"renamed", entry(tool, func(m *FileMetadata) { m.Name = "./usr/bin/tooL" }), tool, "name"},
		{"size", entry(tool, func(m *FileMetadata) { m.UncompressedSize-- }), tool, "size"},
		{"setuid file", entry(tool, func(m *FileMetadata) { m.Mode = 0o4755; m.UID = 0 }), tool, "mode"},
		{"setuid root via hard link", entry(link, func(m *FileMetadata) { m.Mode = 0o4755; m.UID, m.GID = 0, 0 }), link, "mode"},
		{"hard link owner", entry(link, func(m *FileMetadata) { m.UID = 0 }), link, "owner"},
		{"hard link target", entry(link, func(m *FileMetadata) { m.Linkname = "./bin/big" }), link, "link target"},
		{"owner name", entry(tool, func(m *FileMetadata) { m.Uname = "root" }), tool, "owner names"},
		{"mtime", entry(tool, func(m *FileMetadata) { m.ModTime = m.ModTime.Add(time.Second) }), tool, "modification time"},
		{"type", entry(link, func(m *FileMetadata) { m.Type = TypeSymlink }), link, "type"},
		{"added xattr", entry(tool, func(m *FileMetadata) {
			m.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\xff\xff\xff\xff"}
		}), tool, "PAX records"},
		{"PAX size override", entry(tool, func(m *FileMetadata) {
			m.PAXRecords = map[string]string{"size": "4999"}
			m.UncompressedSize = 4999
		}), tool, "size"},
		{"changed xattr", entry(xattrs, func(m *FileMetadata) {
			for k := range m.PAXRecords {
				if strings.HasPrefix(k, "SCHILY.xattr.") {
					m.PAXRecords[k] = "forged"
				}
			}
		}), xattrs, "PAX records"},
		{"dropped xattrs", entry(xattrs, func(m *FileMetadata) { m.PAXRecords = nil }), xattrs, "PAX records"},
		{"device", entry(entryNamed(t, z0, "./dev-null"), func(m *FileMetadata) { m.Devminor = 5 }), entryNamed(t, z0, "./dev-null"), "device"},
		{"missing last entry", func(z *Ztoc) { z.TOC.FileMetadata = z.TOC.FileMetadata[:len(z.TOC.FileMetadata)-1] }, -1, "more than the zTOC's"},
		{"uncompressed size past the stream", func(z *Ztoc) { z.UncompressedArchiveSize += 512 }, -1, "uncompressed size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := cloneZtoc(z0)
			tc.edit(z)
			x, err := viaWire(t, z)
			if err != nil {
				t.Fatalf("the edited zTOC does not open (%v); this test wants it to reach Verify", err)
			}
			_, err = x.Verify(context.Background(), bytes.NewReader(f.blob), f.opts())
			if !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), tc.wantInVer) {
				t.Errorf("Verify = %v, want ErrVerify naming %q", err, tc.wantInVer)
			}
			if tc.entry < 0 {
				return
			}
			r := NewReader(x, ReaderAtSource(x, bytes.NewReader(f.blob)), nil)
			if err := r.CheckEntry(context.Background(), tc.entry); !errors.Is(err, ErrHeaderMismatch) {
				t.Errorf("CheckEntry(%q) = %v, want ErrHeaderMismatch", x.Entries()[tc.entry].Name, err)
			}
		})
	}
}

// TestForgedWindowAttack reproduces the attack of issue 10: a zTOC whose
// checkpoint windows were edited ("alpha" -> "ALPHA") inflates files with
// the edited bytes. Every per-file check passes; Verify catches it, and so
// does any read that inflates the span before it together with it.
func TestForgedWindowAttack(t *testing.T) {
	f := tamperFixture(t)
	z := cloneZtoc(f.res.Ztoc)
	x0, err := NewLayerIndex(f.res.Ztoc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Find a span whose bytes change when "alpha" becomes "ALPHA" in its
	// window.
	victim := SpanID(-1)
	for id := SpanID(1); int(id) < x0.NumSpans() && victim < 0; id++ {
		zz := cloneZtoc(f.res.Ztoc)
		editCheckpoints(t, zz, func(p []Checkpoint, w [][]byte) ([]Checkpoint, [][]byte) {
			w[id] = bytes.ReplaceAll(w[id], []byte("alpha"), []byte("ALPHA"))
			return p, w
		})
		x, err := NewLayerIndex(zz, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		c0, c1 := x.SpanCompressedRange(id)
		got, err := x.InflateSpan(id, f.blob[c0:c1], nil)
		u0, u1 := x.SpanUncompressedRange(id)
		if err == nil && !bytes.Equal(got, f.raw[u0:u1]) {
			victim, z = id, zz
		}
	}
	if victim < 0 {
		t.Fatal("no span changes when its window is edited; the fixture needs repeated text")
	}
	x, err := viaWire(t, z)
	if err != nil {
		t.Fatal(err)
	}
	// Reading the victim span alone serves edited bytes (this is why the
	// store must not trust an unverified zTOC beyond its registry).
	r := NewReader(x, ReaderAtSource(x, bytes.NewReader(f.blob)), nil)
	u0, u1 := x.SpanUncompressedRange(victim)
	got := make([]byte, u1-u0)
	if _, err := r.ReadAt(context.Background(), got, u0); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, f.raw[u0:u1]) {
		t.Fatal("the forged window changed nothing")
	}
	if !bytes.Contains(got, []byte("ALPHA")) {
		t.Error("the forged bytes do not contain the forger's text")
	}
	// A read of the span before it and the victim together is refused.
	r2 := NewReader(x, ReaderAtSource(x, bytes.NewReader(f.blob)), nil)
	p0, _ := x.SpanUncompressedRange(victim - 1)
	both := make([]byte, u1-p0)
	if _, err := r2.ReadAt(context.Background(), both, p0); !errors.Is(err, ErrVerify) {
		t.Errorf("ReadAt over spans %d-%d = %v, want ErrVerify from the window check", victim-1, victim, err)
	}
	// Verify names the checkpoint, and proves every checkpoint before the
	// forged one, none from it on.
	opts := f.opts()
	proven := 0
	opts.OnCheckpoint = func(n int) {
		if n != proven+1 {
			t.Errorf("OnCheckpoint(%d) after %d: want one more each time", n, proven)
		}
		proven = n
	}
	_, err = x.Verify(context.Background(), bytes.NewReader(f.blob), opts)
	if want := fmt.Sprintf("checkpoint %d ", victim); !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), want) {
		t.Errorf("Verify = %v, want ErrVerify naming %q", err, want)
	}
	if proven != int(victim) {
		t.Errorf("Verify proved %d checkpoints of a zTOC whose checkpoint %d is forged, want %d", proven, victim, victim)
	}
	// The genuine zTOC has every checkpoint proven.
	opts.OnCheckpoint = func(n int) { proven = n }
	mustVerify(t, x0, f.blob, opts)
	if want := len(x0.cps.Points); proven != want {
		t.Errorf("Verify of the genuine zTOC proved %d checkpoints, want %d", proven, want)
	}
}

func TestVerifyBlobProblems(t *testing.T) {
	f := tamperFixture(t)
	x, err := viaWire(t, f.res.Ztoc)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(f.blob)
	corrupt[len(corrupt)/2] ^= 0x10
	other := newFixture(t, genEntries(99, 150, 256<<10), func(r []byte) []byte { return gzipMembers(t, r, 6, 0) }, 64<<10)
	for _, tc := range []struct {
		name string
		blob []byte
		opts VerifyOptions
	}{
		{"wrong digest", f.blob, VerifyOptions{Digest: digest.FromString("other")}},
		{"wrong DiffID", f.blob, VerifyOptions{Digest: sha(f.blob), DiffID: digest.FromString("other")}},
		{"truncated", f.blob[:len(f.blob)-100], VerifyOptions{Digest: sha(f.blob)}},
		{"extra bytes", append(bytes.Clone(f.blob), 0, 0, 0), VerifyOptions{Digest: sha(f.blob)}},
		{"corrupt", corrupt, VerifyOptions{Digest: sha(f.blob)}},
		{"another layer", other.blob, VerifyOptions{Digest: sha(other.blob)}},
		{"tar instead of gzip", f.raw, VerifyOptions{Digest: sha(f.raw)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := x.Verify(context.Background(), bytes.NewReader(tc.blob), tc.opts); !errors.Is(err, ErrVerify) {
				t.Errorf("Verify = %v, want ErrVerify", err)
			}
		})
	}
	if _, err := x.Verify(context.Background(), bytes.NewReader(f.blob), VerifyOptions{}); err == nil || errors.Is(err, ErrVerify) {
		t.Errorf("Verify without a digest = %v, want a usage error", err)
	}
}

// failingReader fails after n bytes.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	p = p[:min(len(p), f.n)]
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// TestVerifyReaderErrorAndCancel: a failing read is not a bad layer, and a
// cancelled context returns ctx.Err().
func TestVerifyReaderErrorAndCancel(t *testing.T) {
	f := tamperFixture(t)
	x, err := viaWire(t, f.res.Ztoc)
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("connection reset")
	_, err = x.Verify(context.Background(), &failingReader{r: bytes.NewReader(f.blob), n: len(f.blob) / 2, err: boom}, f.opts())
	if !errors.Is(err, boom) || errors.Is(err, ErrVerify) {
		t.Errorf("Verify with a failing reader = %v, want the reader's error and not ErrVerify", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cr := &cancelAfter{r: bytes.NewReader(f.blob), n: len(f.blob) / 3, cancel: cancel}
	if _, err := x.Verify(ctx, cr, f.opts()); err != context.Canceled {
		t.Errorf("Verify with a cancelled context = %v, want context.Canceled", err)
	}
}

// cancelAfter cancels its context once n bytes were read.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p[:min(len(p), 4096)])
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

// TestHeaderChecksBeforeVerify: a genuine zTOC passes CheckEntry for every
// entry type, and checking one entry checks every entry whose headers lie
// in the same spans: a directory listing costs a fetch per span.
func TestHeaderChecksBeforeVerify(t *testing.T) {
	f := tamperFixture(t)
	x, err := viaWire(t, f.res.Ztoc)
	if err != nil {
		t.Fatal(err)
	}
	src := &countingSource{inner: ReaderAtSource(x, bytes.NewReader(f.blob))}
	r := NewReader(x, src, NewSpanCache(1<<30))
	for i, m := range x.Entries() {
		if err := r.CheckEntry(context.Background(), i); err != nil {
			t.Fatalf("CheckEntry(%q) of a genuine zTOC = %v", m.Name, err)
		}
	}
	if got, max := src.spans.Load(), int64(x.NumSpans()); got > max {
		t.Errorf("checking %d entries fetched %d spans, more than the layer's %d", len(x.Entries()), got, max)
	}
	// A fresh reader: checking the first entry checks its span's others.
	src2 := &countingSource{inner: ReaderAtSource(x, bytes.NewReader(f.blob))}
	r2 := NewReader(x, src2, nil)
	if err := r2.CheckEntry(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	lo, hi := x.EntriesWithHeadersIn(x.SpanUncompressedRange(0))
	if hi-lo < 10 {
		t.Fatalf("span 0 holds the headers of %d entries; the test wants many", hi-lo)
	}
	for i := lo; i < hi; i++ {
		if checked, err := r2.HeaderChecks().Result(i); !checked || err != nil {
			t.Errorf("entry %d after checking entry 1: checked %v, %v; want checked", i, checked, err)
		}
	}
	if got := src2.calls.Load(); got != 1 {
		t.Errorf("checking entries of span 0 took %d fetches, want 1", got)
	}
	// Reading a file through a hard link checks the link's own header and
	// the target's.
	link := entryNamed(t, f.res.Ztoc, "./usr/bin/tool-link")
	r3 := NewReader(x, ReaderAtSource(x, bytes.NewReader(f.blob)), nil)
	if err := r3.CheckHeader(context.Background(), link, 0, 100); err != nil {
		t.Fatal(err)
	}
	target, _ := x.Resolve(link)
	for _, i := range []int{link, target} {
		if checked, err := r3.HeaderChecks().Result(i); !checked || err != nil {
			t.Errorf("entry %q after CheckHeader of the hard link: checked %v, %v", x.Entries()[i].Name, checked, err)
		}
	}
}

// TestCheckHeaderRunLongNames: header runs with PAX headers and GNU long
// names parse whole, and a run that holds two entries is refused.
func TestCheckHeaderRunLongNames(t *testing.T) {
	long := "./" + strings.Repeat("d/", 80) + "file"
	mt := time.Unix(1600000000, 0).UTC()
	es := []testEntry{
		{hdr: tar.Header{Name: long, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt, Size: 3, Format: tar.FormatGNU}, data: []byte("abc")},
		{hdr: tar.Header{Name: long + "-pax", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt, Size: 3, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.user.a": "1"}}, data: []byte("def")},
		{hdr: tar.Header{Name: "./plain", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mt, Size: 3, Format: tar.FormatUSTAR}, data: []byte("ghi")},
	}
	f := newFixture(t, es, func(r []byte) []byte { return gzipMembers(t, r, 6, 0) }, 64<<10)
	x, err := NewLayerIndex(f.res.Ztoc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range es {
		s, e := x.HeaderRange(i)
		if e-s < 1024 && i < 2 {
			t.Errorf("entry %d: header run [%d, %d) is a single block; want the long-name headers too", i, s, e)
		}
		if err := x.CheckHeaderRun(i, f.raw[s:e]); err != nil {
			t.Errorf("CheckHeaderRun(%d) = %v", i, err)
		}
	}
	// Entry 2 claimed to start where entry 1's headers start: the run holds
	// a whole other entry.
	z := cloneZtoc(f.res.Ztoc)
	z.TOC.FileMetadata = []FileMetadata{f.res.Ztoc.TOC.FileMetadata[2]}
	bad, err := NewLayerIndex(z, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	s, e := bad.HeaderRange(0)
	if err := bad.CheckHeaderRun(0, f.raw[s:e]); !errors.Is(err, ErrHeaderMismatch) {
		t.Errorf("CheckHeaderRun over three entries' headers = %v, want ErrHeaderMismatch", err)
	}
}
