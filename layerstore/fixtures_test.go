package layerstore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/lazypull/lazypull/layerstore/artifact"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/ztoc"
)

// testSpanSize is the span size of every zTOC in these tests: the smallest
// the configuration allows, so that layers of a few hundred KiB have many
// spans.
const testSpanSize = 64 << 10

// ---------------------------------------------------------------------------
// Registry: go-containerregistry's in-process registry (with the referrers
// API) behind a handler that records every request and can inject faults.

// reqRecord is one request the registry saw.
type reqRecord struct {
	method string
	path   string
	kind   string // ping, manifests, blobs, uploads, referrers, tags, other
	target string // digest or tag for manifests, blobs, referrers
	rng    string // Range header
	status int
	bytes  int64 // response body bytes written
	at     time.Time
	done   bool // the handler has returned (status and bytes are final)
}

// testRegistry is a registry for one test.
type testRegistry struct {
	host string
	url  string
	srv  *httptest.Server

	mu   sync.Mutex // guards the fields below
	reqs []reqRecord
	// fault, when set, may answer a request itself (it returns true then).
	fault func(w http.ResponseWriter, r *http.Request) bool
	// noReferrers answers 404 to the referrers API (like distribution 2.8).
	noReferrers bool
	// tamper flips the byte at compressed offset tamperAt in every range
	// answer for blob tamperBlob that covers it.
	tamperBlob digest.Digest
	tamperAt   int64
	// delay is slept before answering each blob request.
	delay time.Duration
}

func newTestRegistry(t testing.TB) *testRegistry {
	t.Helper()
	h := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)), ggcr.WithReferrersSupport(true))
	tr := &testRegistry{}
	tr.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.serve(h, w, r)
	}))
	tr.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS probes of the client
	tr.srv.Start()
	t.Cleanup(tr.srv.Close)
	u, _ := url.Parse(tr.srv.URL)
	tr.host, tr.url = u.Host, tr.srv.URL
	return tr
}

// classify names the kind of a registry request and its target.
func classify(p string) (kind, target string) {
	if p == "/v2/" || p == "/v2" {
		return "ping", ""
	}
	if strings.Contains(p, "/blobs/uploads") {
		return "uploads", ""
	}
	for _, k := range []string{"manifests", "blobs", "referrers", "tags"} {
		if i := strings.LastIndex(p, "/"+k+"/"); i >= 0 {
			return k, p[i+len(k)+2:]
		}
	}
	return "other", ""
}

type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func (tr *testRegistry) serve(h http.Handler, w http.ResponseWriter, r *http.Request) {
	kind, target := classify(r.URL.Path)
	cw := &countingWriter{ResponseWriter: w}
	// Recorded before anything is answered, so a request whose response a
	// client has seen is always in the log (since waits for it to finish).
	tr.mu.Lock()
	idx := len(tr.reqs)
	tr.reqs = append(tr.reqs, reqRecord{method: r.Method, path: r.URL.Path, kind: kind, target: target, rng: r.Header.Get("Range"),
		at: time.Now()})
	tr.mu.Unlock()
	defer func() {
		tr.mu.Lock()
		tr.reqs[idx].status, tr.reqs[idx].bytes, tr.reqs[idx].done = cw.status, cw.n, true
		tr.mu.Unlock()
	}()
	tr.mu.Lock()
	fault, noRef, tamperBlob, tamperAt, delay := tr.fault, tr.noReferrers, tr.tamperBlob, tr.tamperAt, tr.delay
	tr.mu.Unlock()
	if kind == "blobs" && delay > 0 {
		time.Sleep(delay)
	}
	if fault != nil && fault(cw, r) {
		return
	}
	if kind == "referrers" && noRef {
		cw.Header().Set("Content-Type", "application/json")
		cw.WriteHeader(http.StatusNotFound)
		_, _ = cw.Write([]byte(`{"errors":[{"code":"NOT_FOUND","message":"404 page not found"}]}`))
		return
	}
	if kind == "blobs" && r.Method == http.MethodGet && tamperBlob != "" && target == tamperBlob.String() && r.Header.Get("Range") != "" {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var first, last, total int64
		if _, err := fmt.Sscanf(rec.Header().Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &total); err == nil &&
			tamperAt >= first && tamperAt <= last && int(tamperAt-first) < len(body) {
			body[tamperAt-first] ^= 0x5a
		}
		for k, v := range rec.Header() {
			cw.Header()[k] = v
		}
		cw.WriteHeader(rec.Code)
		_, _ = cw.Write(body)
		return
	}
	h.ServeHTTP(cw, r)
}

func (tr *testRegistry) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.fault = f
}

func (tr *testRegistry) setNoReferrers(v bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.noReferrers = v
}

func (tr *testRegistry) setTamper(blob digest.Digest, at int64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.tamperBlob, tr.tamperAt = blob, at
}

func (tr *testRegistry) setDelay(d time.Duration) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.delay = d
}

// mark returns a position in the request log for since.
func (tr *testRegistry) mark() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.reqs)
}

// since returns the requests after mark that match keep (all when nil),
// waiting a little for those still being answered so their status and
// byte counts are final.
func (tr *testRegistry) since(mark int, keep func(reqRecord) bool) []reqRecord {
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.mu.Lock()
		var out []reqRecord
		pending := false
		for _, r := range tr.reqs[mark:] {
			if keep == nil || keep(r) {
				out = append(out, r)
				pending = pending || !r.done
			}
		}
		tr.mu.Unlock()
		if !pending || time.Now().After(deadline) {
			return out
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// blobGets selects GETs of blob d (ranged or not).
func blobGets(d digest.Digest) func(reqRecord) bool {
	return func(r reqRecord) bool {
		return r.method == http.MethodGet && r.kind == "blobs" && r.target == d.String()
	}
}

// anyBlobGet selects every blob GET.
func anyBlobGet(r reqRecord) bool { return r.method == http.MethodGet && r.kind == "blobs" }

// ---------------------------------------------------------------------------
// Layers and images built in the test.

// testFile is one tar entry of a test layer.
type testFile struct {
	name string
	typ  byte
	data []byte
	link string
}

// testLayer is a gzip tar layer and what it holds.
type testLayer struct {
	files     []testFile
	tar       []byte
	blob      []byte
	digest    digest.Digest
	diffID    digest.Digest
	mediaType string
	// annotations of the layer's descriptor (TOC digests).
	annotations map[string]string
}

// content returns the expected data of regular file or hard link name.
func (l *testLayer) content(name string) ([]byte, bool) {
	for _, f := range l.files {
		if f.name != name {
			continue
		}
		switch f.typ {
		case tar.TypeReg:
			return f.data, true
		case tar.TypeLink:
			return l.content(f.link)
		}
	}
	return nil, false
}

// layerFiles returns the entries of a test layer: random (incompressible)
// data of randomKiB and text of textKiB, and a few small entries.
func layerFiles(seed uint64, randomKiB, textKiB int) []testFile {
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	cc := rand.NewChaCha8(key)
	rng := rand.New(cc)
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = cc.Read(b)
		return b
	}
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			fmt.Fprintf(&b, "line %d of layer %d: %08x\n", rng.IntN(100000), seed, rng.Uint32())
		}
		return b.Bytes()[:n]
	}
	return []testFile{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/hostname", typ: tar.TypeReg, data: []byte(fmt.Sprintf("layer-%d\n", seed))},
		{name: "data/", typ: tar.TypeDir},
		{name: "data/random.bin", typ: tar.TypeReg, data: random(randomKiB << 10)},
		{name: "data/log.txt", typ: tar.TypeReg, data: text(textKiB << 10)},
		{name: "data/small.bin", typ: tar.TypeReg, data: random(3000)},
		{name: "data/tail.bin", typ: tar.TypeReg, data: random(150 << 10)},
		{name: "data/link", typ: tar.TypeLink, link: "data/small.bin"},
		{name: "data/sym", typ: tar.TypeSymlink, link: "small.bin"},
		{name: "empty", typ: tar.TypeReg},
	}
}

// newTestLayer builds a gzip tar layer of files.
func newTestLayer(t testing.TB, files []testFile) *testLayer {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, f := range files {
		hdr := &tar.Header{Name: f.name, Typeflag: f.typ, Linkname: f.link, Mode: 0o644, ModTime: mtime, Format: tar.FormatPAX}
		switch f.typ {
		case tar.TypeDir:
			hdr.Mode = 0o755
		case tar.TypeReg:
			hdr.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %s: %v", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatalf("tar data %s: %v", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gb bytes.Buffer
	gw := gzip.NewWriter(&gb)
	if _, err := gw.Write(tb.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	return &testLayer{
		files: files, tar: tb.Bytes(), blob: gb.Bytes(),
		digest: digest.FromBytes(gb.Bytes()), diffID: digest.FromBytes(tb.Bytes()),
		mediaType: ocispec.MediaTypeImageLayerGzip,
	}
}

// stdLayer is a layer of about randomKiB+textKiB+160 KiB with many spans.
func stdLayer(t testing.TB, seed uint64, randomKiB, textKiB int) *testLayer {
	t.Helper()
	return newTestLayer(t, layerFiles(seed, randomKiB, textKiB))
}

// testImage is an image pushed to a testRegistry.
type testImage struct {
	ref      string // host/repo:tag
	named    reference.Named
	layers   []*testLayer
	config   []byte
	manifest []byte
	digest   digest.Digest
}

// imageOptions vary how an image is pushed.
type imageOptions struct {
	// diffIDs replace the config's DiffIDs (wrong ones for tests).
	diffIDs []digest.Digest
	// annotations of the manifest (SOCI v2 index digest).
	annotations map[string]string
	// skipBlobs leaves layer blobs out of the push (pushed elsewhere).
	skipBlobs bool
}

// pushClient returns a registry client for pushing test content (its
// requests do not count in a Store's statistics).
func (tr *testRegistry) pushClient(t testing.TB) *remote.Client {
	t.Helper()
	return pushClientFor(t, tr.host)
}

func pushClientFor(t testing.TB, host string) *remote.Client {
	t.Helper()
	c, err := remote.NewClient(remote.Options{InsecureRegistries: []string{host}})
	if err != nil {
		t.Fatalf("remote.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func mustNamed(t testing.TB, s string) reference.Named {
	t.Helper()
	n, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		t.Fatalf("ParseNormalizedNamed(%q): %v", s, err)
	}
	return n
}

// pushImage pushes an image of layers as repo:tag.
func (tr *testRegistry) pushImage(t testing.TB, repo, tag string, layers []*testLayer, opts imageOptions) *testImage {
	t.Helper()
	return pushImageTo(t, tr.host, repo, tag, layers, opts)
}

// pushImageTo pushes an image of layers as repo:tag to the registry at host.
func pushImageTo(t testing.TB, host, repo, tag string, layers []*testLayer, opts imageOptions) *testImage {
	t.Helper()
	ctx := context.Background()
	c := pushClientFor(t, host)
	ref := host + "/" + repo + ":" + tag
	named := mustNamed(t, ref)
	diffIDs := opts.diffIDs
	if diffIDs == nil {
		for _, l := range layers {
			diffIDs = append(diffIDs, l.diffID)
		}
	}
	cfg, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		t.Fatal(err)
	}
	push := func(data []byte) {
		if err := c.PushBlob(ctx, named, digest.FromBytes(data), int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatalf("PushBlob: %v", err)
		}
	}
	push(cfg)
	m := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))},
		Annotations: opts.annotations,
	}
	for _, l := range layers {
		if !opts.skipBlobs {
			push(l.blob)
		}
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: l.mediaType, Digest: l.digest, Size: int64(len(l.blob)), Annotations: l.annotations})
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutManifest(ctx, named, tag, ocispec.MediaTypeImageManifest, data); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	return &testImage{ref: ref, named: named, layers: layers, config: cfg, manifest: data, digest: digest.FromBytes(data)}
}

// ---------------------------------------------------------------------------
// zTOCs and SOCI indexes.

// testZtoc is a serialized zTOC of a test layer.
type testZtoc struct {
	layer  *testLayer
	data   []byte
	digest digest.Digest
}

// buildZtoc builds the zTOC of l with testSpanSize; edit, when set, may
// change it before it is serialized (tampered indexes).
func buildZtoc(t testing.TB, l *testLayer, edit func(z *ztoc.Ztoc)) *testZtoc {
	t.Helper()
	res, err := ztoc.Build(context.Background(), bytes.NewReader(l.blob), ztoc.BuildOptions{SpanSize: testSpanSize})
	if err != nil {
		t.Fatalf("ztoc.Build: %v", err)
	}
	if edit != nil {
		edit(res.Ztoc)
	}
	data, err := ztoc.Marshal(res.Ztoc)
	if err != nil {
		t.Fatalf("ztoc.Marshal: %v", err)
	}
	return &testZtoc{layer: l, data: data, digest: digest.FromBytes(data)}
}

// openIndex opens z for random access (span geometry for assertions).
func (z *testZtoc) openIndex(t testing.TB) *ztoc.LayerIndex {
	t.Helper()
	x, err := ztoc.OpenLayerIndex(bytes.NewReader(z.data), int64(len(z.data)))
	if err != nil {
		t.Fatalf("OpenLayerIndex: %v", err)
	}
	return x
}

func (z *testZtoc) indexLayer() ztoc.IndexLayer {
	return ztoc.IndexLayer{ZtocDigest: z.digest, ZtocSize: int64(len(z.data)), LayerDigest: z.layer.digest,
		LayerMediaType: z.layer.mediaType, SpanSize: testSpanSize}
}

// putLocalZtoc stores z in the local artifact store under root and maps its
// layer to it, as an earlier run of the daemon would have.
func putLocalZtoc(t testing.TB, root string, z *testZtoc) {
	t.Helper()
	local, err := artifact.OpenLocal(filepath.Join(root, "artifacts"), 0)
	if err != nil {
		t.Fatalf("OpenLocal: %v", err)
	}
	ctx := context.Background()
	if err := local.WriteBlob(ctx, z.digest, z.data); err != nil {
		t.Fatalf("WriteBlob: %v", err)
	}
	if err := local.WriteRef(ctx, artifact.LayerRef, artifact.LayerKey(z.layer.digest, testSpanSize), z.digest); err != nil {
		t.Fatalf("WriteRef: %v", err)
	}
}

// putZtoc stores z in the store's own local artifact store and maps its
// layer to it.
func (ts *testStore) putZtoc(t testing.TB, z *testZtoc) {
	t.Helper()
	ctx := context.Background()
	if err := ts.local.WriteBlob(ctx, z.digest, z.data); err != nil {
		t.Fatalf("WriteBlob: %v", err)
	}
	if err := ts.local.WriteRef(ctx, artifact.LayerRef, artifact.LayerKey(z.layer.digest, testSpanSize), z.digest); err != nil {
		t.Fatalf("WriteRef: %v", err)
	}
}

// localArtifacts reports whether zTOC zd and the mapping of layer to a zTOC
// are in the local store under root.
func localArtifacts(t testing.TB, root string, layer, zd digest.Digest) (blob, mapping bool) {
	t.Helper()
	local, err := artifact.OpenLocal(filepath.Join(root, "artifacts"), 0)
	if err != nil {
		t.Fatalf("OpenLocal: %v", err)
	}
	if f, _, err := local.Open(zd); err == nil {
		f.Close()
		blob = true
	}
	_, err = local.ReadRef(context.Background(), artifact.LayerRef, artifact.LayerKey(layer, testSpanSize))
	return blob, err == nil
}

// pushZtocs pushes the zTOC blobs and the empty SOCI config to img's
// repository.
func (tr *testRegistry) pushZtocs(t testing.TB, named reference.Named, zs []*testZtoc) []ztoc.IndexLayer {
	t.Helper()
	c := tr.pushClient(t)
	ctx := context.Background()
	var layers []ztoc.IndexLayer
	for _, z := range zs {
		if err := c.PushBlob(ctx, named, z.digest, int64(len(z.data)), bytes.NewReader(z.data)); err != nil {
			t.Fatalf("push zTOC: %v", err)
		}
		layers = append(layers, z.indexLayer())
	}
	if err := c.PushBlob(ctx, named, ztoc.EmptyConfigDigest, int64(len(ztoc.EmptyConfig)), bytes.NewReader(ztoc.EmptyConfig)); err != nil {
		t.Fatalf("push SOCI config: %v", err)
	}
	return layers
}

// pushSociV1 pushes a SOCI v1 index of zs as a referrer of img (through the
// referrers API, or the tag fallback when the registry answers 404 to it).
func (tr *testRegistry) pushSociV1(t testing.TB, img *testImage, zs []*testZtoc) digest.Digest {
	t.Helper()
	layers := tr.pushZtocs(t, img.named, zs)
	subject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: img.digest, Size: int64(len(img.manifest))}
	data, desc, err := ztoc.BuildIndexV1(layers, subject, nil)
	if err != nil {
		t.Fatalf("BuildIndexV1: %v", err)
	}
	if _, err := tr.pushClient(t).PushReferrer(context.Background(), img.named, ocispec.MediaTypeImageManifest, data); err != nil {
		t.Fatalf("PushReferrer: %v", err)
	}
	return desc.Digest
}

// pushSociV2 pushes a SOCI v2 index of zs by digest to repo and returns its
// digest, for the image manifest's annotation.
func (tr *testRegistry) pushSociV2(t testing.TB, repo string, zs []*testZtoc) digest.Digest {
	t.Helper()
	named := mustNamed(t, tr.host+"/"+repo)
	layers := tr.pushZtocs(t, named, zs)
	data, desc, err := ztoc.BuildIndexV2(layers, nil)
	if err != nil {
		t.Fatalf("BuildIndexV2: %v", err)
	}
	if _, err := tr.pushClient(t).PutManifest(context.Background(), named, desc.Digest.String(), ocispec.MediaTypeImageManifest, data); err != nil {
		t.Fatalf("PutManifest(SOCI v2 index): %v", err)
	}
	return desc.Digest
}
