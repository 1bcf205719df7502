package layerstore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/artifact"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/tests/gzipbomb"
	"github.com/lazypull/lazypull/tests/testenv"
	"github.com/lazypull/lazypull/ztoc"
)

// Adversarial indexes (issue 10): zTOCs and SOCI indexes crafted with
// ztoc's own builder and encoder, served by Debian's docker-registry. Each
// is refused at lookup, or caught before or at the first read that would
// use what it lies about: the read fails (EIO at the FUSE boundary) and no
// byte returned ever differs from the layer's; the daemon goes on serving
// other layers.

// wordsLayer is a gzip layer of repeated text (so that spans copy from
// their checkpoint windows) holding "alpha" everywhere, with a hard link,
// small files and a file with an xattr, over many 64 KiB spans.
func wordsLayer(t testing.TB, seed uint64) *testLayer {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	words := []string{"alpha", "beta", "gamma", "delta", "alpha-beta", "epsilon"}
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			fmt.Fprintf(&b, "%s %s %d\n", words[rng.IntN(len(words))], words[rng.IntN(len(words))], rng.IntN(50))
		}
		return b.Bytes()[:n]
	}
	files := []testFile{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/motd", typ: tar.TypeReg, data: text(300)},
		{name: "data/", typ: tar.TypeDir},
		{name: "data/a.txt", typ: tar.TypeReg, data: text(400 << 10)},
		{name: "data/small.bin", typ: tar.TypeReg, data: text(3000)},
		{name: "data/b.txt", typ: tar.TypeReg, data: text(300 << 10)},
		{name: "data/link", typ: tar.TypeLink, link: "data/small.bin"},
		{name: "data/c.txt", typ: tar.TypeReg, data: text(200 << 10)},
	}
	return newTestLayer(t, files)
}

// realRegistry starts Debian's docker-registry and returns it as a
// testRegistry for the push helpers (requests are not recorded).
func realRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := testenv.StartRegistry(t, testenv.RegistryOptions{})
	return &testRegistry{host: r.Host, url: "http://" + r.Host}
}

// editCheckpointsOf rewrites z's checkpoints and windows with edit, then
// recomputes every span digest from the layer's blob, as a forger can.
func editCheckpointsOf(t testing.TB, l *testLayer, z *ztoc.Ztoc, edit func(p []ztoc.Checkpoint, w [][]byte)) {
	t.Helper()
	ci := &z.CompressionInfo
	tab, err := ztoc.ParseCheckpoints(bytes.NewReader(ci.Checkpoints), int64(len(ci.Checkpoints)))
	if err != nil {
		t.Fatal(err)
	}
	points := append([]ztoc.Checkpoint(nil), tab.Points...)
	windows := make([][]byte, len(points))
	for i := range windows {
		if windows[i], err = tab.Window(i, make([]byte, ztoc.WindowSize)); err != nil {
			t.Fatal(err)
		}
	}
	edit(points, windows)
	var buf bytes.Buffer
	if err := ztoc.EncodeCheckpoints(&buf, tab.SpanSize, points, windows); err != nil {
		t.Fatal(err)
	}
	ci.Checkpoints = buf.Bytes()
	x, err := ztoc.NewLayerIndex(z, nil, 0, ztoc.WithLimits(ztoc.Limits{}))
	if err == nil {
		ci.SpanDigests = ci.SpanDigests[:0]
		for id := 0; id < x.NumSpans(); id++ {
			c0, c1 := x.SpanCompressedRange(ztoc.SpanID(id))
			ci.SpanDigests = append(ci.SpanDigests, digest.FromBytes(l.blob[c0:c1]))
		}
		return
	}
	// The edit broke the digests' count or ranges: resign with a
	// placeholder first (NewLayerIndex checks one digest per span).
	ci.SpanDigests = make([]digest.Digest, len(points))
	for i := range ci.SpanDigests {
		ci.SpanDigests[i] = digest.FromString("placeholder")
	}
	ci.MaxSpanID = ztoc.SpanID(len(points) - 1)
	if x, err = ztoc.NewLayerIndex(z, nil, 0); err != nil {
		t.Fatalf("the edited zTOC does not open: %v", err)
	}
	ci.SpanDigests = ci.SpanDigests[:0]
	for id := 0; id < x.NumSpans(); id++ {
		c0, c1 := x.SpanCompressedRange(ztoc.SpanID(id))
		ci.SpanDigests = append(ci.SpanDigests, digest.FromBytes(l.blob[c0:c1]))
	}
}

// forgedWindowSpan returns a checkpoint k > 0 whose window, edited "alpha"
// -> "ALPHA", makes span k inflate to other bytes (no error), so the edit
// would serve wrong bytes if it were used.
func forgedWindowSpan(t testing.TB, l *testLayer) int {
	t.Helper()
	for k := 1; ; k++ {
		z := buildZtoc(t, l, nil)
		x := z.openIndex(t)
		if k >= x.NumSpans() {
			t.Fatal("no span of the layer copies \"alpha\" from its window")
		}
		res, _ := ztoc.Build(context.Background(), bytes.NewReader(l.blob), ztoc.BuildOptions{SpanSize: testSpanSize})
		editCheckpointsOf(t, l, res.Ztoc, func(_ []ztoc.Checkpoint, w [][]byte) {
			w[k] = bytes.ReplaceAll(w[k], []byte("alpha"), []byte("ALPHA"))
		})
		fx, err := ztoc.NewLayerIndex(res.Ztoc, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		c0, c1 := fx.SpanCompressedRange(ztoc.SpanID(k))
		u0, u1 := fx.SpanUncompressedRange(ztoc.SpanID(k))
		got, err := fx.InflateSpan(ztoc.SpanID(k), l.blob[c0:c1], nil)
		if err == nil && !bytes.Equal(got, l.tar[u0:u1]) && bytes.Contains(got, []byte("ALPHA")) {
			return k
		}
	}
}

// patchEntryCount makes a marshaled zTOC claim n entries: it finds the
// file table's vector (its length is the zTOC's entry count, followed by
// that many forward offsets) and rewrites the length.
func patchEntryCount(t testing.TB, b []byte, have, n int) []byte {
	t.Helper()
	b = bytes.Clone(b)
	found := -1
	for p := 0; p+4+4*have <= len(b); p += 4 {
		if binary.LittleEndian.Uint32(b[p:]) != uint32(have) {
			continue
		}
		ok := true
		for i := 0; i < have && ok; i++ {
			at := p + 4 + 4*i
			off := int(binary.LittleEndian.Uint32(b[at:]))
			ok = off > 0 && at+off+4 <= len(b)
			if ok {
				// A table: its soffset leads to a vtable of a few
				// uint16 fields.
				tab := at + off
				vt := tab - int(int32(binary.LittleEndian.Uint32(b[tab:])))
				ok = vt >= 0 && vt+4 <= len(b)
				if ok {
					vs, ts := binary.LittleEndian.Uint16(b[vt:]), binary.LittleEndian.Uint16(b[vt+2:])
					ok = vs >= 4 && vs%2 == 0 && vs <= 64 && ts >= 4 && ts < 1024
				}
			}
		}
		if ok {
			if found >= 0 {
				t.Fatalf("two candidate entry vectors at %d and %d", found, p)
			}
			found = p
		}
	}
	if found < 0 {
		t.Fatal("no entry vector found")
	}
	binary.LittleEndian.PutUint32(b[found:], uint32(n))
	return b
}

// tamper is one adversarial index.
type tamper struct {
	name string
	// edit changes the zTOC built from the layer (before marshaling), or
	// raw replaces the marshaled zTOC.
	edit func(t testing.TB, l *testLayer, z *ztoc.Ztoc)
	raw  func(t testing.TB, l *testLayer, data []byte) []byte
	// target is a file whose read must fail ("" when the lookup is refused).
	target string
	// refused: the lookup does not serve the layer from this index.
	refused bool
}

func tampers(t testing.TB, l *testLayer) []tamper {
	forged := forgedWindowSpan(t, l)
	x := buildZtoc(t, l, nil).openIndex(t)
	// A file whose data lies in the forged span.
	spanFile := func(k int) string {
		u0, u1 := x.SpanUncompressedRange(ztoc.SpanID(k))
		for _, e := range x.Entries() {
			if e.Type == ztoc.TypeReg && e.UncompressedOffset < u1 && e.UncompressedOffset+e.UncompressedSize > u0 {
				return e.Name
			}
		}
		t.Fatalf("no file in span %d", k)
		return ""
	}
	entry := func(z *ztoc.Ztoc, name string) *ztoc.FileMetadata {
		for i := range z.TOC.FileMetadata {
			if z.TOC.FileMetadata[i].Name == name {
				return &z.TOC.FileMetadata[i]
			}
		}
		t.Fatalf("no entry %s", name)
		return nil
	}
	// A checkpoint in the middle of the layer, to move.
	mid := x.NumSpans() / 2
	return []tamper{
		{name: "window alpha->ALPHA", target: spanFile(forged), edit: func(t testing.TB, l *testLayer, z *ztoc.Ztoc) {
			editCheckpointsOf(t, l, z, func(_ []ztoc.Checkpoint, w [][]byte) {
				w[forged] = bytes.ReplaceAll(w[forged], []byte("alpha"), []byte("ALPHA"))
			})
		}},
		{name: "checkpoint bits", target: spanFile(mid), edit: func(t testing.TB, l *testLayer, z *ztoc.Ztoc) {
			editCheckpointsOf(t, l, z, func(p []ztoc.Checkpoint, _ [][]byte) {
				if p[mid].Bits == 0 {
					p[mid].In++
				}
				p[mid].Bits = (p[mid].Bits + 1) % 8
			})
		}},
		{name: "checkpoint out", target: spanFile(mid), edit: func(t testing.TB, l *testLayer, z *ztoc.Ztoc) {
			editCheckpointsOf(t, l, z, func(p []ztoc.Checkpoint, _ [][]byte) { p[mid].Out += 100 })
		}},
		{name: "moved file offset", target: "data/b.txt", edit: func(t testing.TB, l *testLayer, z *ztoc.Ztoc) {
			entry(z, "data/b.txt").UncompressedOffset += 512
		}},
		{name: "renamed entry", target: "data/evil.txt", edit: func(t testing.TB, l *testLayer, z *ztoc.Ztoc) {
			entry(z, "data/c.txt").Name = "data/evil.txt"
		}},
		{name: "PAX override (uid, xattr)", target: "data/a.txt", edit: func(t testing.TB, l *testLayer, z *ztoc.Ztoc) {
			e := entry(z, "data/a.txt")
			e.UID, e.GID = 0, 0
			if e.PAXRecords == nil {
				e.PAXRecords = map[string]string{}
			}
			e.PAXRecords["uid"] = "0"
			e.PAXRecords["SCHILY.xattr.security.capability"] = "\x01\x00\x00\x02\xff\xff\xff\xff"
		}},
		{name: "hard link claiming setuid root", refused: true, edit: func(t testing.TB, l *testLayer, z *ztoc.Ztoc) {
			e := entry(z, "data/link")
			e.Mode |= 0o4000
			e.UID, e.GID = 0, 0
		}},
		{name: "2^49-byte span", refused: true, raw: func(t testing.TB, l *testLayer, _ []byte) []byte {
			res, err := ztoc.Build(context.Background(), bytes.NewReader(l.blob), ztoc.BuildOptions{SpanSize: testSpanSize})
			if err != nil {
				t.Fatal(err)
			}
			z := res.Ztoc
			const huge = int64(1) << 49
			var buf bytes.Buffer
			win := make([]byte, ztoc.WindowSize)
			tab, _ := ztoc.ParseCheckpoints(bytes.NewReader(z.CompressionInfo.Checkpoints), int64(len(z.CompressionInfo.Checkpoints)))
			p0 := tab.Points[0]
			if err := ztoc.EncodeCheckpoints(&buf, tab.SpanSize, []ztoc.Checkpoint{p0, {In: 6e11, Out: huge}}, [][]byte{win, win}); err != nil {
				t.Fatal(err)
			}
			z.CompressionInfo.Checkpoints = buf.Bytes()
			z.CompressionInfo.SpanDigests = []digest.Digest{digest.FromString("a"), digest.FromString("b")}
			z.CompressionInfo.MaxSpanID = 1
			z.UncompressedArchiveSize = huge + 1<<20
			z.CompressedArchiveSize = 1e12
			b, err := ztoc.Marshal(z, ztoc.WithLimits(ztoc.Limits{MaxSpanSize: 1 << 50}))
			if err != nil {
				t.Fatalf("Marshal of the 2^49-byte span: %v", err)
			}
			return b
		}},
		{name: "3 million entries", refused: true, raw: func(t testing.TB, l *testLayer, data []byte) []byte {
			return patchEntryCount(t, data, len(x.Entries()), 3_000_000)
		}},
	}
}

// readAllCareful reads every file of the layer in stream order; every byte
// returned must be the layer's. It returns the files whose read failed.
func readAllCareful(t *testing.T, c alsfs.LayerContent, l *testLayer) map[string]error {
	t.Helper()
	failed := map[string]error{}
	for i, e := range c.Entries() {
		if e.Type != ztoc.TypeReg {
			continue
		}
		want, _ := l.content(e.Name)
		got, err := readFile(context.Background(), c, i, int(e.UncompressedSize), 64<<10)
		if len(got) > len(want) || !bytes.Equal(got, want[:len(got)]) {
			t.Fatalf("read %s returned %d bytes that are not the layer's (err %v): a wrong byte reached a reader", e.Name, len(got), err)
		}
		if err != nil {
			failed[e.Name] = err
		} else if len(got) != len(want) {
			t.Fatalf("read %s returned %d bytes without error, the file has %d", e.Name, len(got), len(want))
		}
	}
	return failed
}

// TestAdversarialIndexes serves each adversarial index from a SOCI index
// in a real registry: refused at lookup, or caught at the first read that
// needs what it lies about (no wrong byte); the daemon then serves another
// image's layer exactly. Then the same with whole-layer verification on and
// prefetch off: verification completes and marks each served one bad.
func TestAdversarialIndexes(t *testing.T) {
	reg := realRegistry(t)
	l := wordsLayer(t, 1)
	good := stdLayer(t, 2, 200, 100)
	goodImg := pushImageTo(t, reg.host, "app/good", "v1", []*testLayer{good}, imageOptions{})
	reg.pushSociV1(t, goodImg, []*testZtoc{buildZtoc(t, good, nil)})
	for i, tc := range tampers(t, l) {
		t.Run(tc.name, func(t *testing.T) {
			img := pushImageTo(t, reg.host, fmt.Sprintf("evil/case%d", i), "v1", []*testLayer{l}, imageOptions{})
			res, err := ztoc.Build(context.Background(), bytes.NewReader(l.blob), ztoc.BuildOptions{SpanSize: testSpanSize})
			if err != nil {
				t.Fatal(err)
			}
			var data []byte
			if tc.edit != nil {
				tc.edit(t, l, res.Ztoc)
				if data, err = ztoc.Marshal(res.Ztoc); err != nil {
					t.Fatalf("Marshal: %v", err)
				}
			} else {
				honest, err := ztoc.Marshal(res.Ztoc)
				if err != nil {
					t.Fatal(err)
				}
				data = tc.raw(t, l, honest)
			}
			z := &testZtoc{layer: l, data: data, digest: digest.FromBytes(data)}
			reg.pushSociV1(t, img, []*testZtoc{z})

			for _, verify := range []bool{false, true} {
				s := newTestStore(t, reg, func(c *config.Config) {
					c.Index.OnDemand = "off" // a refused index is not replaced silently
					c.Prefetch.Enabled = false
					c.Verify.Enabled = verify
				}, Options{})
				lv, err := s.lookup(t, img.ref, l.digest)
				switch {
				case tc.refused && err == nil:
					t.Fatalf("lookup served the layer from the index")
				case tc.refused:
					if !errors.Is(err, ErrNotServed) && !errors.Is(err, ErrNoIndex) && !errors.Is(err, ztoc.ErrLimit) {
						t.Errorf("lookup = %v, want not served (header mismatch or limit)", err)
					}
					if _, ls := s.status(t, l.digest); ls != nil {
						t.Errorf("status lists the refused layer: %+v", ls)
					}
				case err != nil:
					t.Fatalf("lookup = %v, want the layer served (the lie is caught at read)", err)
				case verify:
					// Prefetch off: whole-layer verification runs anyway
					// and finds the lie without any read.
					ls := s.waitLayer(t, l.digest, 60*time.Second, "marked bad by verification", func(ls *control.LayerStatus) bool { return ls.Bad != "" })
					if ls.Verified || !strings.Contains(ls.Bad, "verification") {
						t.Errorf("status %+v, want bad by whole-layer verification", ls)
					}
				default:
					c, err := lv.Content()
					if err != nil {
						t.Fatal(err)
					}
					failed := readAllCareful(t, c, l)
					ferr, ok := failed[tc.target]
					if !ok {
						t.Fatalf("reading %s through the index succeeded; failed reads: %v", tc.target, failed)
					}
					// ErrLayerBad or a header mismatch, or (a span whose
					// end a lying checkpoint moved, inflated from the
					// proven one before it) a stream that ends early:
					// EIO either way, and the layer's verification run,
					// which the read started, marks it bad.
					if errors.Is(ferr, context.Canceled) || errors.Is(ferr, context.DeadlineExceeded) {
						t.Errorf("read %s = %v: alsfs answers EINTR for that, want EIO", tc.target, ferr)
					}
					ls := s.waitLayer(t, l.digest, 30*time.Second, "marked bad", func(ls *control.LayerStatus) bool { return ls.Bad != "" })
					if ls.Verified {
						t.Errorf("status after the failed read %+v, want the layer bad", ls)
					}
				}
				// The daemon survives and serves another layer exactly;
				// with prefetch off, verification of that layer (from the
				// registry's honest index) completes without any read.
				gv := s.mustLookup(t, goodImg.ref, good.digest)
				if verify {
					s.waitLayer(t, good.digest, 60*time.Second, "verified with prefetch off", func(ls *control.LayerStatus) bool { return ls.Verified })
				}
				checkAllFiles(t, gv, good, 1<<20)
				s.closeStore()
			}
		})
	}
}

// TestPoisonedSharedBaseLayer: two images in two repositories share a base
// layer; one repository's SOCI index for it has a forged window. The other
// image's layer is served from its own (honest) index and reads exactly,
// before and after the poisoned one was caught, in either order.
func TestPoisonedSharedBaseLayer(t *testing.T) {
	reg := realRegistry(t)
	base := wordsLayer(t, 3)
	forged := forgedWindowSpan(t, base)
	evil := pushImageTo(t, reg.host, "evil/app", "v1", []*testLayer{base}, imageOptions{})
	honest := pushImageTo(t, reg.host, "good/app", "v1", []*testLayer{base}, imageOptions{})
	poisoned := buildZtoc(t, base, func(z *ztoc.Ztoc) {
		editCheckpointsOf(t, base, z, func(_ []ztoc.Checkpoint, w [][]byte) {
			w[forged] = bytes.ReplaceAll(w[forged], []byte("alpha"), []byte("ALPHA"))
		})
	})
	reg.pushSociV1(t, evil, []*testZtoc{poisoned})
	reg.pushSociV1(t, honest, []*testZtoc{buildZtoc(t, base, nil)})

	for _, evilFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("evil first %v", evilFirst), func(t *testing.T) {
			s := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "off" }, Options{})
			var ev, gv alsfs.Layer
			if evilFirst {
				ev = s.mustLookup(t, evil.ref, base.digest)
				gv = s.mustLookup(t, honest.ref, base.digest)
			} else {
				gv = s.mustLookup(t, honest.ref, base.digest)
				ev = s.mustLookup(t, evil.ref, base.digest)
			}
			if ev.(*layerView).l == gv.(*layerView).l {
				t.Fatal("both images are served by one layer: the poisoned index serves the other repository")
			}
			if got := ev.(*layerView).l.ztocDigest; got != poisoned.digest {
				t.Fatalf("the evil image's layer uses zTOC %s, want the poisoned one", got)
			}
			ec, _ := ev.Content()
			failed := readAllCareful(t, ec, base)
			if len(failed) == 0 {
				t.Fatal("every read through the poisoned index succeeded")
			}
			checkAllFiles(t, gv, base, 64<<10)
			// A new lookup of the honest image after the poisoned layer
			// went bad still reads exactly.
			checkAllFiles(t, s.mustLookup(t, honest.ref, base.digest), base, 64<<10)
		})
	}
}

// TestUntrustedWindowNeverServedAlone: the span whose window was forged is
// read alone, first thing (no read of the span before it): the read waits
// for the proof of its checkpoint, which fails; nothing is returned, the
// layer is bad. Without the proof the read returned "ALPHA"
// (TestForgedWindowAttack in ztoc shows the bytes).
func TestUntrustedWindowNeverServedAlone(t *testing.T) {
	reg := newTestRegistry(t)
	l := wordsLayer(t, 4)
	forged := forgedWindowSpan(t, l)
	img := reg.pushImage(t, "app/forged", "v1", []*testLayer{l}, imageOptions{})
	z := buildZtoc(t, l, func(z *ztoc.Ztoc) {
		editCheckpointsOf(t, l, z, func(_ []ztoc.Checkpoint, w [][]byte) {
			w[forged] = bytes.ReplaceAll(w[forged], []byte("alpha"), []byte("ALPHA"))
		})
	})
	reg.pushSociV1(t, img, []*testZtoc{z})
	s := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "off" }, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	c, _ := lv.Content()
	x := z.openIndex(t)
	u0, u1 := x.SpanUncompressedRange(ztoc.SpanID(forged))
	for i, e := range c.Entries() {
		lo, hi := max(u0, e.UncompressedOffset), min(u1, e.UncompressedOffset+e.UncompressedSize)
		if e.Type != ztoc.TypeReg || hi-lo < 1000 {
			continue
		}
		// The part of this file in the forged span, and nothing else.
		p := make([]byte, hi-lo)
		n, err := c.ReadFile(context.Background(), i, p, lo-e.UncompressedOffset)
		if n != 0 || !errors.Is(err, ErrLayerBad) {
			t.Fatalf("ReadFile of %s in span %d alone = %d bytes (ALPHA: %v), %v; want 0, ErrLayerBad",
				e.Name, forged, n, bytes.Contains(p[:n], []byte("ALPHA")), err)
		}
		checkBadLayer(t, s, lv, l, z.digest, fmt.Sprintf("checkpoint %d", forged))
		return
	}
	t.Fatalf("no file has data in span %d", forged)
}

// gzipOf compresses data into one gzip member.
func gzipOf(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// rawLayer wraps a crafted blob as a test layer (its DiffID is unknown:
// any digest; what is tested is refused before it matters).
func rawLayer(blob []byte) *testLayer {
	return &testLayer{blob: blob, digest: digest.FromBytes(blob), diffID: digest.FromString("unknown"),
		mediaType: "application/vnd.oci.image.layer.v1.tar+gzip"}
}

// TestAdversarialLayersOnDemand: layers without an index that would make
// on-demand indexing work without bound, pushed to Debian's docker-registry:
// a 5 GB one-block gzip bomb (5 MB compressed) and 3 million tar entries.
// Indexing stops at a limit, the layer is not served (the host pulls it
// itself), the daemon's heap stays small, and it serves another layer.
func TestAdversarialLayersOnDemand(t *testing.T) {
	if testing.Short() {
		t.Skip("streams a 5 GB bomb")
	}
	reg := realRegistry(t)
	good := stdLayer(t, 5, 200, 100)
	goodImg := pushImageTo(t, reg.host, "app/good", "v1", []*testLayer{good}, imageOptions{})

	var bomb bytes.Buffer
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	const matches = int64(5_000_000_000)/258 - (int64(5_000_000_000)/258)%4 + 2
	size := int64(1 + 258*int64(matches))
	if err := tw.WriteHeader(&tar.Header{Name: "bomb", Typeflag: tar.TypeReg, Size: size, Mode: 0o644}); err != nil {
		t.Fatal(err)
	}
	tw.Flush() // the bomb's zeros are the data, padding and end marker
	bomb.Write(gzipOf(t, hdr.Bytes()))
	deflated, _ := gzipbomb.OneBlock(matches)
	if _, err := io.Copy(&bomb, deflated); err != nil {
		t.Fatal(err)
	}

	var entries bytes.Buffer
	var hdrs bytes.Buffer
	tw = tar.NewWriter(&hdrs)
	for i := 0; i < 2000; i++ {
		if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d/f%07d", i), Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(1e9, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	tw.Flush()
	member := gzipOf(t, hdrs.Bytes())
	for i := 0; i < 3_000_000/2000; i++ {
		entries.Write(member)
	}
	entries.Write(gzipOf(t, make([]byte, 1024)))

	for _, tc := range []struct {
		name  string
		blob  []byte
		limit string
	}{
		{"5 GB one-block gzip bomb", bomb.Bytes(), "span"},
		{"3 million entries", entries.Bytes(), "entries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := rawLayer(tc.blob)
			img := pushImageTo(t, reg.host, "evil/ondemand", strings.Fields(tc.name)[1], []*testLayer{l}, imageOptions{})
			s := newTestStore(t, reg, func(c *config.Config) {
				c.Index.OnDemand = "sync"
				c.Index.MaxEntries = 100_000 // the default (1 Mi) in ztoc's own tests
			}, Options{})
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := s.lookup(t, img.ref, l.digest)
			took := time.Since(start)
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ztoc.ErrLimit) || !strings.Contains(err.Error(), tc.limit) {
				t.Fatalf("lookup of the %s = %v, want a refusal for the %s limit", tc.name, err, tc.limit)
			}
			t.Logf("%s (%d compressed bytes) refused in %v, heap %d -> %d MiB: %v", tc.name, len(tc.blob), took.Round(time.Millisecond),
				before.HeapInuse>>20, after.HeapInuse>>20, err)
			if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 256<<20 {
				t.Errorf("the heap grew by %d MiB while indexing the %s", grew>>20, tc.name)
			}
			if _, ls := s.status(t, l.digest); ls != nil {
				t.Errorf("status lists the refused layer: %+v", ls)
			}
			checkAllFiles(t, s.mustLookup(t, goodImg.ref, good.digest), good, 1<<20)
		})
	}
}

// blackHole accepts TCP connections and never answers: a shared repository
// that is unreachable in the slowest way (connections hang, not refused).
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(done)
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestSharedRepositoryUnreachable: the shared repository hangs. A lookup
// waits for it at most the shared timeout (not the registry client's
// retries of 30 s requests); after three failures in a row it is not asked
// at all (circuit open) and lookups cost nothing more. Every layer is
// served (from the image's registry).
func TestSharedRepositoryUnreachable(t *testing.T) {
	reg := newTestRegistry(t)
	hole := blackHole(t)
	const timeout = 500 * time.Millisecond
	s := newTestStore(t, reg, func(c *config.Config) {
		c.Artifacts.SharedRepository = hole + "/lazypull/artifacts"
		c.Registry.Insecure = append(c.Registry.Insecure, hole)
		c.Index.OnDemand = "off"
	}, Options{SharedReadTimeout: timeout})
	for i := range 6 {
		l := stdLayer(t, uint64(60+i), 100, 50)
		img := reg.pushImage(t, fmt.Sprintf("app/shared%d", i), "v1", []*testLayer{l}, imageOptions{})
		reg.pushSociV1(t, img, []*testZtoc{buildZtoc(t, l, nil)})
		start := time.Now()
		lv := s.mustLookup(t, img.ref, l.digest)
		took := time.Since(start)
		t.Logf("lookup %d: %v", i, took.Round(time.Millisecond))
		switch {
		case i < 3 && took > timeout+2*time.Second:
			t.Errorf("lookup %d took %v with the shared repository hanging, want about %v", i, took, timeout)
		case i >= 3 && took > timeout/2:
			t.Errorf("lookup %d took %v with the circuit open, want no wait for the shared repository", i, took)
		}
		if _, ls := s.status(t, l.digest); ls == nil || ls.IndexSource != "registry" {
			t.Errorf("lookup %d: status %+v, want served from the registry's index", i, ls)
		}
		checkAllFiles(t, lv, l, 1<<20)
	}
	if !s.shared.(*artifact.Breaker).Open() {
		t.Error("the circuit is not open")
	}
}

// TestUntrustedProofCost measures what proving an unverified index costs:
// the first read of the layer's last file through a trusted index fetches
// its spans only; through an index from the registry (not verified here) it
// waits until the layer's verification has passed the file's checkpoint,
// i.e. fetches and decodes the layer up to it. Reads before that point
// later wait for nothing. Both serve exact bytes.
func TestUntrustedProofCost(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 70, 4000, 2000)
	z := buildZtoc(t, l, nil)
	x := z.openIndex(t)
	trusted := reg.pushImage(t, "app/trusted", "v1", []*testLayer{l}, imageOptions{})
	untrusted := reg.pushImage(t, "app/untrusted", "v1", []*testLayer{l}, imageOptions{})
	reg.pushSociV1(t, untrusted, []*testZtoc{z})
	reg.setDelay(2 * time.Millisecond) // per blob request

	type result struct {
		took            time.Duration
		requests, bytes int64
	}
	first := func(t *testing.T, s *testStore, ref string) (result, alsfs.LayerContent) {
		lv := s.mustLookup(t, ref, l.digest)
		c, _ := lv.Content()
		i := entryIndex(t, c, "data/tail.bin")
		want, _ := l.content("data/tail.bin")
		mark := reg.mark()
		start := time.Now()
		got, err := readFile(context.Background(), c, i, len(want), 128<<10)
		r := result{took: time.Since(start)}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read data/tail.bin: %v (exact: %v)", err, bytes.Equal(got, want))
		}
		for _, q := range reg.since(mark, blobGets(l.digest)) {
			r.requests++
			r.bytes += q.bytes
		}
		return r, c
	}
	s1 := newTestStore(t, reg, nil, Options{})
	s1.putZtoc(t, z)
	tr, _ := first(t, s1, trusted.ref)
	s2 := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "off" }, Options{})
	ur, c := first(t, s2, untrusted.ref)
	s3 := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "off"; c.Verify.ProveCheckpoints = false }, Options{})
	nr, _ := first(t, s3, untrusted.ref)
	t.Logf("first read of the last file (%d-byte layer, %d spans): trusted index %v, %d requests, %d bytes; unverified index %v, %d requests, %d bytes; unverified, prove_checkpoints = false: %v, %d requests, %d bytes",
		len(l.blob), x.NumSpans(), tr.took.Round(time.Millisecond), tr.requests, tr.bytes, ur.took.Round(time.Millisecond), ur.requests, ur.bytes,
		nr.took.Round(time.Millisecond), nr.requests, nr.bytes)
	if nr.bytes > int64(len(l.blob))/10 {
		t.Errorf("with prove_checkpoints = false the read fetched %d bytes of %d", nr.bytes, len(l.blob))
	}
	// verification.trust_indexes_for: the same, for the repositories named
	// only ("app/untrust" is neither a "/"-prefix nor the repository).
	s4 := newTestStore(t, reg, func(c *config.Config) {
		c.Index.OnDemand = "off"
		c.Verify.TrustIndexesFor = []string{reg.host + "/app/untrust", reg.host + "/app/"}
	}, Options{})
	if tr4, _ := first(t, s4, untrusted.ref); tr4.bytes > int64(len(l.blob))/10 {
		t.Errorf("with trust_indexes_for naming the repository the read fetched %d bytes of %d", tr4.bytes, len(l.blob))
	}
	s5 := newTestStore(t, reg, func(c *config.Config) {
		c.Index.OnDemand = "off"
		c.Verify.TrustIndexesFor = []string{reg.host + "/app/untrust", reg.host + "/other/"}
	}, Options{})
	if tr5, _ := first(t, s5, untrusted.ref); tr5.bytes < ur.bytes/2 {
		t.Errorf("with trust_indexes_for naming other repositories the read fetched %d bytes, want the proof's %d", tr5.bytes, ur.bytes)
	}

	i := entryIndex(t, c, "data/tail.bin")
	e := c.Entries()[i]
	c0, _ := x.SpanCompressedRange(x.SpanOf(e.UncompressedOffset))
	if tr.bytes > int64(len(l.blob))/10 {
		t.Errorf("through the trusted index the read fetched %d bytes of %d", tr.bytes, len(l.blob))
	}
	if ur.bytes < c0 {
		t.Errorf("through the unverified index the read fetched %d bytes, less than the %d before its span: what proved its checkpoint?", ur.bytes, c0)
	}
	// Files before the frontier: no wait, no fetch.
	mark := reg.mark()
	checkAllFiles(t, s2.mustLookup(t, untrusted.ref, l.digest), l, 1<<20)
	if got := reg.since(mark, blobGets(l.digest)); len(got) != 0 {
		t.Errorf("reading the rest of the proven layer sent %d requests, want 0", len(got))
	}
}

// TestForgedIndexOnRealMount: through a real FUSE mount, a container-like
// reader of a file whose span's window was forged in the SOCI index gets
// EIO, never "ALPHA"; files before the forged checkpoint read exactly, and
// the mount then serves another image's layer exactly.
func TestForgedIndexOnRealMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	reg := realRegistry(t)
	l := wordsLayer(t, 6)
	forged := forgedWindowSpan(t, l)
	img := pushImageTo(t, reg.host, "evil/mounted", "v1", []*testLayer{l}, imageOptions{})
	z := buildZtoc(t, l, func(z *ztoc.Ztoc) {
		editCheckpointsOf(t, l, z, func(_ []ztoc.Checkpoint, w [][]byte) {
			w[forged] = bytes.ReplaceAll(w[forged], []byte("alpha"), []byte("ALPHA"))
		})
	})
	reg.pushSociV1(t, img, []*testZtoc{z})
	good := stdLayer(t, 7, 200, 100)
	goodImg := pushImageTo(t, reg.host, "app/good", "v1", []*testLayer{good}, imageOptions{})
	reg.pushSociV1(t, goodImg, []*testZtoc{buildZtoc(t, good, nil)})

	s := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "off" }, Options{})
	mnt := t.TempDir()
	srv, err := alsfs.Mount(mnt, s.Store, alsfs.Options{SingleUser: true, ReadAheadKB: -1})
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
		}
	})
	diff := func(ref string, d digest.Digest) string {
		return filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(ref)), d.String(), "diff")
	}
	x := z.openIndex(t)
	u0, _ := x.SpanUncompressedRange(ztoc.SpanID(forged))
	sawEIO := false
	for _, e := range x.Entries() {
		if e.Type != ztoc.TypeReg {
			continue
		}
		want, _ := l.content(e.Name)
		got, err := os.ReadFile(filepath.Join(diff(img.ref, l.digest), e.Name))
		switch {
		case err == nil && !bytes.Equal(got, want):
			t.Fatalf("read %s through the mount returned bytes that are not the layer's (ALPHA: %v)", e.Name, bytes.Contains(got, []byte("ALPHA")))
		case err == nil && e.UncompressedOffset+e.UncompressedSize > u0:
			t.Errorf("read %s (data past the forged checkpoint %d) succeeded", e.Name, forged)
		case err != nil && !errors.Is(err, syscall.EIO):
			t.Errorf("read %s = %v, want EIO", e.Name, err)
		case err != nil:
			sawEIO = true
		}
	}
	if !sawEIO {
		t.Fatal("no read failed with EIO")
	}
	for _, f := range good.files {
		want, ok := good.content(f.name)
		if !ok {
			continue
		}
		if got, err := os.ReadFile(filepath.Join(diff(goodImg.ref, good.digest), f.name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s of the other image after the attack: %v", f.name, err)
		}
	}
}

// TestProofFetchFailure: the registry fails while a read waits for the
// proof of its span (a fault injected in front of the registry: a real one
// cannot be made to fail on demand). The read fails at once with the
// fetch's error (not a bad layer, no retry loop), and once the registry is
// back the next read proves the span and returns exact bytes.
func TestProofFetchFailure(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 71, 600, 200)
	img := reg.pushImage(t, "app/flaky", "v1", []*testLayer{l}, imageOptions{})
	reg.pushSociV1(t, img, []*testZtoc{buildZtoc(t, l, nil)})
	s := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "off" }, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	c, _ := lv.Content()
	i := entryIndex(t, c, "data/tail.bin")
	want, _ := l.content("data/tail.bin")
	reg.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/blobs/"+l.digest.String()) {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	start := time.Now()
	n, err := c.ReadFile(context.Background(), i, make([]byte, len(want)), 0)
	if err == nil || errors.Is(err, ErrLayerBad) || n != 0 {
		t.Fatalf("read while the registry fails = %d, %v; want 0 and the fetch error", n, err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the failed read took %v", took)
	}
	if _, ls := s.status(t, l.digest); ls == nil || ls.Bad != "" {
		t.Fatalf("status %+v, want the layer not bad", ls)
	}
	reg.setFault(nil)
	got, err := readFile(context.Background(), c, i, len(want), 1<<20)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the registry is back: %v (exact: %v)", err, bytes.Equal(got, want))
	}
}
