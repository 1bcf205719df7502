package layerstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	stargz "github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containers/storage/pkg/chunked/compressor"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/estargz"
	"github.com/lazypull/lazypull/layerstore/alsfs"
	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/zstdchunked"
)

// estargzLayer converts the tar layer of files to eStargz with
// stargz-snapshotter's own converter (what ctr-remote, nerdctl and BuildKit
// run) and annotates it as they do.
func estargzLayer(t testing.TB, files []testFile, opts ...stargz.Option) *testLayer {
	t.Helper()
	src := newTestLayer(t, files).tar
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
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	tarStream, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return &testLayer{
		files: files, tar: tarStream, blob: blob, digest: digest.FromBytes(blob), diffID: b.DiffID(),
		mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
		annotations: map[string]string{
			estargz.AnnotationTOCDigest:        b.TOCDigest().String(),
			estargz.AnnotationUncompressedSize: strconv.Itoa(len(tarStream)),
		},
	}
}

// zstdChunkedLayer compresses the tar layer of files with containers/
// storage's zstd:chunked compressor (what `podman push --compression-format
// zstd:chunked` runs), annotated as it does.
func zstdChunkedLayer(t testing.TB, files []testFile) *testLayer {
	t.Helper()
	src := newTestLayer(t, files).tar
	ann := map[string]string{}
	var out bytes.Buffer
	level := 3 // podman's default is 10: slower, same format
	w, err := compressor.ZstdCompressor(&out, ann, &level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(src); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return &testLayer{
		files: files, tar: src, blob: out.Bytes(), digest: digest.FromBytes(out.Bytes()), diffID: digest.FromBytes(src),
		mediaType: zstdchunked.MediaType, annotations: ann,
	}
}

func tocOf(l *testLayer) digest.Digest {
	if d, ok := l.annotations[estargz.AnnotationTOCDigest]; ok {
		return digest.Digest(d)
	}
	return digest.Digest(l.annotations[zstdchunked.AnnotationTOCDigest])
}

// tocFormats are the two formats, each with a layer of about 1.5 MiB (made
// once per test binary; tests must not change them).
func tocFormats(t testing.TB) map[string]*testLayer {
	tocLayersOnce.Do(func() {
		tocLayers = map[string]*testLayer{
			formatEstargz:     estargzLayer(t, layerFiles(81, 1200, 300), stargz.WithChunkSize(256<<10)),
			formatZstdChunked: zstdChunkedLayer(t, layerFiles(82, 1200, 300)),
		}
	})
	return tocLayers
}

var (
	tocLayersOnce sync.Once
	tocLayers     map[string]*testLayer
)

func parseInfo(t testing.TB, lv alsfs.Layer) map[string]any {
	t.Helper()
	data, err := lv.Info()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("info %s: %v", data, err)
	}
	return m
}

// TestTOCLayerServedByTOCDigest looks each format up as containers/storage
// >= 1.54 does (by TOC digest): `info` identifies it by TOC only, every file
// reads exactly, and only a small part of the blob was fetched.
func TestTOCLayerServedByTOCDigest(t *testing.T) {
	for format, l := range tocFormats(t) {
		t.Run(format, func(t *testing.T) {
			reg := newTestRegistry(t)
			img := reg.pushImage(t, "app/toc", "v1", []*testLayer{l}, imageOptions{})
			s := newTestStore(t, reg, nil, Options{})
			mark := reg.mark()
			lv := s.mustLookup(t, img.ref, tocOf(l))
			info := parseInfo(t, lv)
			wantComp := 2.0
			if format == formatZstdChunked {
				wantComp = 4
			}
			flags, _ := info["flags"].(map[string]any)
			if info["toc-digest"] != tocOf(l).String() || info["compressed-diff-digest"] != nil || info["diff-digest"] != nil ||
				info["compressed-size"] != float64(len(l.blob)) || info["diff-size"] != float64(len(l.tar)) || info["compression"] != wantComp ||
				flags[ExpectedLayerDiffIDFlag] != l.diffID.String() {
				t.Errorf("info = %v; want toc-digest %s, sizes %d/%d, compression %v, expected DiffID %s, no other digest", info, tocOf(l), len(l.blob), len(l.tar), wantComp, l.diffID)
			}
			var lookupBytes int64
			for _, r := range reg.since(mark, blobGets(l.digest)) {
				lookupBytes += r.bytes
			}
			c, err := lv.Content()
			if err != nil {
				t.Fatal(err)
			}
			// One small file: a few KiB fetched.
			i := entryIndex(t, c, "etc/hostname")
			got, err := readFile(context.Background(), c, i, 64, 4096)
			if want, _ := l.content("etc/hostname"); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read etc/hostname = %q, %v", got, err)
			}
			var fetched int64
			for _, r := range reg.since(mark, blobGets(l.digest)) {
				fetched += r.bytes
			}
			if fetched-lookupBytes > tocSpanTarget*2 || fetched > int64(len(l.blob))/3 {
				t.Errorf("reading one small file fetched %d bytes (lookup %d) of a %d-byte blob", fetched-lookupBytes, lookupBytes, len(l.blob))
			}
			checkAllFiles(t, lv, l, 100<<10)
			rec := httptest.NewRecorder()
			s.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
			if want := `lazypull_layers_loaded_by_format{format="` + format + `"} 1`; !strings.Contains(rec.Body.String(), want) {
				t.Errorf("metrics lack %s", want)
			}
			_, ls := s.status(t, l.digest)
			if ls == nil || ls.Format != format || ls.TOCDigest != tocOf(l).String() || ls.IndexSource != indexSourceOwnTOC {
				t.Errorf("status = %+v; want format %s, TOC %s, index source %q", ls, format, tocOf(l), indexSourceOwnTOC)
			}
			// The TOC's own tar entry and the landmark are in the tree,
			// as an extraction writes them.
			if format == formatEstargz {
				i := entryIndex(t, c, estargz.TOCName)
				got, err := readFile(context.Background(), c, i, 1<<20, 1<<20)
				if err != nil || digest.FromBytes(got) != tocOf(l) {
					t.Errorf("read %s: %d bytes, %v; want the TOC", estargz.TOCName, len(got), err)
				}
				entryIndex(t, c, ".no.prefetch.landmark")
			}
			// Use and release find the layer by the TOC digest podman names.
			s.Use(img.ref, tocOf(l))
			if ls := s.anyLayer(l.digest); ls.uses != 1 {
				t.Errorf("uses after Use by TOC digest = %d, want 1", ls.uses)
			}
			s.Release(img.ref, tocOf(l))
		})
	}
}

// TestTOCLayerLegacyLookup looks the layers up by compressed digest, as
// podman 4.3.1 (containers/storage 1.43) does: `info` identifies them by
// compressed digest and DiffID; an eStargz layer without its
// uncompressed-size annotation is not served that way (the DiffID identity
// needs the tar's exact size).
func TestTOCLayerLegacyLookup(t *testing.T) {
	layers := tocFormats(t)
	reg := newTestRegistry(t)
	s := newTestStore(t, reg, nil, Options{})
	for format, l := range layers {
		img := reg.pushImage(t, "app/legacy", format[:4], []*testLayer{l}, imageOptions{})
		lv := s.mustLookup(t, img.ref, l.digest)
		info := parseInfo(t, lv)
		if info["compressed-diff-digest"] != l.digest.String() || info["diff-digest"] != l.diffID.String() || info["toc-digest"] != nil || info["diff-size"] != float64(len(l.tar)) {
			t.Errorf("%s: info = %v; want compressed digest, DiffID, diff-size %d, no TOC digest", format, info, len(l.tar))
		}
		checkAllFiles(t, lv, l, 64<<10)
	}
	bare := estargzLayer(t, layerFiles(83, 600, 100))
	delete(bare.annotations, estargz.AnnotationUncompressedSize)
	img := reg.pushImage(t, "app/legacy", "bare", []*testLayer{bare}, imageOptions{})
	if _, err := s.lookup(t, img.ref, bare.digest); !errors.Is(err, ErrNotServed) {
		t.Errorf("legacy lookup of eStargz without its size = %v, want ErrNotServed", err)
	}
	lv := s.mustLookup(t, img.ref, tocOf(bare))
	if info := parseInfo(t, lv); info["diff-size"] != -1.0 {
		t.Errorf("TOC lookup without the size: info %v, want diff-size -1", info)
	}
}

// TestTOCLayerTamperedTOC pushes layers whose annotation names another TOC
// digest than the TOC they carry: nothing is served, the host pulls.
func TestTOCLayerTamperedTOC(t *testing.T) {
	for format, l := range tocFormats(t) {
		t.Run(format, func(t *testing.T) {
			reg := newTestRegistry(t)
			bad := *l
			bad.annotations = map[string]string{}
			for k, v := range l.annotations {
				bad.annotations[k] = v
			}
			key := estargz.AnnotationTOCDigest
			if format == formatZstdChunked {
				key = zstdchunked.AnnotationTOCDigest
			}
			other := digest.FromString("another TOC")
			bad.annotations[key] = other.String()
			img := reg.pushImage(t, "app/tampered", "v1", []*testLayer{&bad}, imageOptions{})
			s := newTestStore(t, reg, nil, Options{})
			for _, d := range []digest.Digest{other, l.digest} {
				if _, err := s.lookup(t, img.ref, d); !errors.Is(err, ErrNotServed) {
					t.Errorf("Lookup(%s) of a layer whose TOC is not its annotation's = %v, want ErrNotServed", d, err)
				}
			}
			if _, ls := s.status(t, l.digest); ls != nil {
				t.Errorf("a layer whose TOC does not match is listed: %+v", ls)
			}
		})
	}
}

// TestTOCLayerTamperedChunk serves layers from a registry that flips a byte
// of a file's data in every answer: the read fails, after one refetch, and
// the layer is out of service; no wrong byte is ever returned.
func TestTOCLayerTamperedChunk(t *testing.T) {
	for format, l := range tocFormats(t) {
		t.Run(format, func(t *testing.T) {
			reg := newTestRegistry(t)
			img := reg.pushImage(t, "app/chunk", "v1", []*testLayer{l}, imageOptions{})
			s := newTestStore(t, reg, nil, Options{})
			lv := s.mustLookup(t, img.ref, tocOf(l))
			c, _ := lv.Content()
			i := entryIndex(t, c, "data/random.bin")
			e := c.Entries()[i]
			x := s.anyLayer(l.digest).idx.Layout()
			id := x.SpanOf(e.UncompressedOffset + e.UncompressedSize/2)
			c0, c1 := x.CompressedRange(id)
			reg.setTamper(l.digest, c0+(c1-c0)/2)
			want, _ := l.content("data/random.bin")
			buf := make([]byte, 64<<10)
			off := e.UncompressedSize / 2
			n, err := c.ReadFile(context.Background(), i, buf, off)
			if !errors.Is(err, ErrLayerBad) {
				t.Fatalf("ReadFile over a tampered chunk = %d, %v; want ErrLayerBad", n, err)
			}
			if n > 0 && !bytes.Equal(buf[:n], want[off:off+int64(n)]) {
				t.Fatalf("ReadFile returned %d wrong bytes", n)
			}
			s.waitLayer(t, l.digest, 10*time.Second, "marked bad", func(ls *control.LayerStatus) bool { return ls.Bad != "" })
			reg.setTamper("", 0)
			if _, err := c.ReadFile(context.Background(), entryIndex(t, c, "etc/hostname"), buf, 0); !errors.Is(err, ErrLayerBad) {
				t.Errorf("read of a bad layer = %v, want ErrLayerBad", err)
			}
		})
	}
}

// TestTOCLayerVerifiedAndBlob verifies the layers in the background
// (prefetch and verification on), then reads `blob` whole: the blob's own
// bytes. A blob read before verification waits for it.
func TestTOCLayerVerifiedAndBlob(t *testing.T) {
	for format, l := range tocFormats(t) {
		t.Run(format, func(t *testing.T) {
			reg := newTestRegistry(t)
			img := reg.pushImage(t, "app/verify", "v1", []*testLayer{l}, imageOptions{})
			s := newTestStore(t, reg, func(c *config.Config) {
				c.Prefetch.Enabled = true
				c.Verify.Enabled = true
			}, Options{})
			lv := s.mustLookup(t, img.ref, tocOf(l))
			s.waitLayer(t, l.digest, 20*time.Second, "verified", func(ls *control.LayerStatus) bool { return ls.Verified })
			r, size := lv.Blob()
			got := make([]byte, size)
			if n, err := r.ReadAt(got, 0); (err != nil && err != io.EOF) || n != len(l.blob) || !bytes.Equal(got, l.blob) {
				t.Fatalf("blob: %d bytes, %v; want the %d bytes of the layer", n, err, len(l.blob))
			}
			checkAllFiles(t, lv, l, 1<<20)
		})
		t.Run(format+" blob first", func(t *testing.T) {
			reg := newTestRegistry(t)
			img := reg.pushImage(t, "app/verify", "v2", []*testLayer{l}, imageOptions{})
			s := newTestStore(t, reg, nil, Options{}) // no background verification
			lv := s.mustLookup(t, img.ref, tocOf(l))
			r, size := lv.Blob()
			got := make([]byte, size)
			if n, err := r.ReadAt(got, 0); (err != nil && err != io.EOF) || !bytes.Equal(got[:n], l.blob) {
				t.Fatalf("blob: %d bytes, %v; want the %d bytes of the layer", n, err, len(l.blob))
			}
			if !s.anyLayer(l.digest).verified.Load() {
				t.Error("the layer served its blob without being verified")
			}
		})
	}
}

// TestTOCLayerWrongDiffID serves layers whose image config names another
// DiffID: files read (their chunks match the TOC), but the whole-layer
// verification finds the mismatch and takes the layer out of service, and
// `blob` is never served.
func TestTOCLayerWrongDiffID(t *testing.T) {
	for format, l := range tocFormats(t) {
		t.Run(format, func(t *testing.T) {
			reg := newTestRegistry(t)
			img := reg.pushImage(t, "app/diffid", "v1", []*testLayer{l}, imageOptions{diffIDs: []digest.Digest{digest.FromString("not the layer")}})
			s := newTestStore(t, reg, nil, Options{})
			lv := s.mustLookup(t, img.ref, tocOf(l))
			r, size := lv.Blob()
			buf := make([]byte, size)
			if n, err := r.ReadAt(buf, 0); !errors.Is(err, ErrLayerBad) {
				t.Fatalf("blob of a layer that is not its image's = %d, %v; want ErrLayerBad", n, err)
			}
			_, ls := s.status(t, l.digest)
			if ls == nil || ls.Bad == "" {
				t.Errorf("status = %+v, want bad", ls)
			}
		})
	}
}

// TestTOCLayerHeaderMismatch serves a zstd:chunked layer whose TOC (matching
// its annotation) says another mode than the tar stream for one file: the
// tree shows the TOC's view until the whole-layer verification finds the
// difference and takes the layer out of service.
func TestTOCLayerHeaderMismatch(t *testing.T) {
	l := zstdChunkedLayer(t, layerFiles(84, 800, 100))
	edited := editZstdTOC(t, l, func(entries []map[string]any) {
		for _, e := range entries {
			if e["name"] == "data/small.bin" {
				e["mode"] = 0o4755
			}
		}
	})
	reg := newTestRegistry(t)
	img := reg.pushImage(t, "app/view", "v1", []*testLayer{edited}, imageOptions{})
	s := newTestStore(t, reg, func(c *config.Config) { c.Verify.Enabled = true; c.Prefetch.Enabled = true }, Options{})
	lv := s.mustLookup(t, img.ref, tocOf(edited))
	ls := s.waitLayer(t, edited.digest, 20*time.Second, "marked bad", func(ls *control.LayerStatus) bool { return ls.Bad != "" })
	if !bytes.Contains([]byte(ls.Bad), []byte("mode")) {
		t.Errorf("bad because %q, want the mode mismatch", ls.Bad)
	}
	if _, err := lv.Content(); !errors.Is(err, ErrLayerBad) {
		t.Errorf("Content of the bad layer = %v, want ErrLayerBad", err)
	}
}

// editZstdTOC returns l with its TOC edited by fn and rewritten (a new TOC
// frame, the tar-split moved behind it, a new footer and annotations): a
// layer whose TOC and tar stream disagree, as a hostile image could have.
func editZstdTOC(t testing.TB, l *testLayer, fn func(entries []map[string]any)) *testLayer {
	t.Helper()
	loc, _, err := zstdchunked.Locate(l.annotations, int64(len(l.blob)))
	if err != nil {
		t.Fatal(err)
	}
	var pos, tsPos [4]int64
	fmt.Sscanf(l.annotations[zstdchunked.AnnotationTOCPosition], "%d:%d:%d:%d", &pos[0], &pos[1], &pos[2], &pos[3])
	fmt.Sscanf(l.annotations[zstdchunked.AnnotationTarSplitPosition], "%d:%d:%d", &tsPos[0], &tsPos[1], &tsPos[2])
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	raw, err := dec.DecodeAll(l.blob[pos[0]:pos[0]+pos[1]], nil)
	if err != nil {
		t.Fatal(err)
	}
	var toc map[string]any
	if err := json.Unmarshal(raw, &toc); err != nil {
		t.Fatal(err)
	}
	var entries []map[string]any
	for _, e := range toc["entries"].([]any) {
		entries = append(entries, e.(map[string]any))
	}
	fn(entries)
	raw, _ = json.Marshal(toc)
	enc, _ := zstd.NewWriter(nil)
	comp := enc.EncodeAll(raw, nil)
	enc.Close()
	skippable := func(data []byte) []byte {
		h := make([]byte, 8)
		binary.LittleEndian.PutUint32(h, 0x184D2A50)
		binary.LittleEndian.PutUint32(h[4:], uint32(len(data)))
		return append(h, data...)
	}
	tail := loc.TailOffset()
	blob := append([]byte(nil), l.blob[:tail]...)
	tocOff := int64(len(blob)) + 8
	blob = append(blob, skippable(comp)...)
	tsOff := int64(len(blob)) + 8
	blob = append(blob, skippable(l.blob[tsPos[0]:tsPos[0]+tsPos[1]])...)
	footer := make([]byte, 64)
	for i, v := range []int64{tocOff, int64(len(comp)), int64(len(raw)), 1, tsOff, tsPos[1], tsPos[2]} {
		binary.LittleEndian.PutUint64(footer[8*i:], uint64(v))
	}
	copy(footer[56:], "GNUlInUx")
	blob = append(blob, skippable(footer)...)
	out := *l
	out.blob, out.digest = blob, digest.FromBytes(blob)
	out.annotations = map[string]string{
		zstdchunked.AnnotationTOCDigest:        digest.FromBytes(comp).String(),
		zstdchunked.AnnotationTOCPosition:      fmt.Sprintf("%d:%d:%d:1", tocOff, len(comp), len(raw)),
		zstdchunked.AnnotationTarSplitPosition: fmt.Sprintf("%d:%d:%d", tsOff, tsPos[1], tsPos[2]),
	}
	return &out
}

// TestIndexImageNamesFormats runs `lazypull index` on an image of one layer
// of each kind: the gzip layer gets a zTOC, the eStargz and zstd:chunked
// layers are named with their TOC digest and need none.
func TestIndexImageNamesFormats(t *testing.T) {
	ls := tocFormats(t)
	gz := stdLayer(t, 85, 300, 100)
	reg := newTestRegistry(t)
	img := reg.pushImage(t, "app/mixed", "v1", []*testLayer{gz, ls[formatEstargz], ls[formatZstdChunked]}, imageOptions{})
	s := newTestStore(t, reg, nil, Options{})
	res, err := s.IndexImage(context.Background(), img.ref, false, nopProgress{})
	if err != nil {
		t.Fatalf("IndexImage: %v", err)
	}
	if len(res.Layers) != 1 || res.Layers[0].LayerDigest != gz.digest || res.IndexDigest == "" {
		t.Errorf("indexed %+v (index %s), want the gzip layer only", res.Layers, res.IndexDigest)
	}
	want := map[digest.Digest]string{gz.digest: formatGzip, ls[formatEstargz].digest: formatEstargz, ls[formatZstdChunked].digest: formatZstdChunked}
	for _, f := range res.Formats {
		if f.Format != want[f.Layer.Digest] || f.NeedsIndex != (f.Format == formatGzip) || (f.TOCDigest != "") == f.NeedsIndex {
			t.Errorf("layer %s: %+v, want format %s", f.Layer.Digest, f, want[f.Layer.Digest])
		}
		if !f.NeedsIndex && !bytes.Contains([]byte(f.Note), []byte("own TOC")) {
			t.Errorf("note for %s: %q", f.Format, f.Note)
		}
	}
	// Only TOC layers: nothing to index, no error.
	only := reg.pushImage(t, "app/toconly", "v1", []*testLayer{ls[formatZstdChunked]}, imageOptions{})
	res, err = s.IndexImage(context.Background(), only.ref, false, nopProgress{})
	if err != nil || res.IndexDigest != "" || len(res.Formats) != 1 {
		t.Errorf("IndexImage of a zstd:chunked image = %+v, %v; want no index, no error", res, err)
	}
}

type nopProgress struct{}

func (nopProgress) LayerStarted(remote.Layer)                         {}
func (nopProgress) LayerProgress(remote.Layer, int64)                 {}
func (nopProgress) LayerDone(remote.Layer, *BuildResult, bool, error) {}
