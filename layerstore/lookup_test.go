package layerstore

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/ztoc"
)

// TestLookupSources looks a layer up through every place a zTOC can come
// from and checks where it came from, what the registry was asked and that
// every file reads back exactly.
func TestLookupSources(t *testing.T) {
	tests := []struct {
		name string
		// setup pushes the image (and indexes) and may store artifacts
		// under root; it returns the image.
		setup      func(t *testing.T, reg *testRegistry, root string, l *testLayer, z *testZtoc) *testImage
		wantSource string
		// wantZtocGets is the number of GETs of the zTOC blob.
		wantZtocGets int
		// wantTagFallback: the referrers tag was asked for.
		wantTagFallback bool
	}{
		{
			name: "local artifact store",
			setup: func(t *testing.T, reg *testRegistry, root string, l *testLayer, z *testZtoc) *testImage {
				putLocalZtoc(t, root, z)
				return reg.pushImage(t, "app/local", "v1", []*testLayer{l}, imageOptions{})
			},
			wantSource: "local",
		},
		{
			name: "SOCI v1 via the referrers API",
			setup: func(t *testing.T, reg *testRegistry, root string, l *testLayer, z *testZtoc) *testImage {
				img := reg.pushImage(t, "app/v1api", "v1", []*testLayer{l}, imageOptions{})
				reg.pushSociV1(t, img, []*testZtoc{z})
				return img
			},
			wantSource:   "registry",
			wantZtocGets: 1,
		},
		{
			name: "SOCI v1 via the sha256-<hex> tag fallback",
			setup: func(t *testing.T, reg *testRegistry, root string, l *testLayer, z *testZtoc) *testImage {
				reg.setNoReferrers(true)
				img := reg.pushImage(t, "app/v1tag", "v1", []*testLayer{l}, imageOptions{})
				reg.pushSociV1(t, img, []*testZtoc{z})
				return img
			},
			wantSource:      "registry",
			wantZtocGets:    1,
			wantTagFallback: true,
		},
		{
			name: "SOCI v2 annotation",
			setup: func(t *testing.T, reg *testRegistry, root string, l *testLayer, z *testZtoc) *testImage {
				idx := reg.pushSociV2(t, "app/v2", []*testZtoc{z})
				return reg.pushImage(t, "app/v2", "v1", []*testLayer{l}, imageOptions{
					annotations: map[string]string{ztoc.AnnotationSociIndexDigest: idx.String()}})
			},
			wantSource:   "registry",
			wantZtocGets: 1,
		},
	}
	l := stdLayer(t, 1, 400, 200)
	z := buildZtoc(t, l, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t)
			root := t.TempDir()
			img := tc.setup(t, reg, root, l, z)
			s := openStore(t, testConfig(root, reg.host), Options{})
			mark := reg.mark()
			lv := s.mustLookup(t, img.ref, l.digest)
			_, ls := s.status(t, l.digest)
			if ls == nil || ls.IndexSource != tc.wantSource {
				t.Fatalf("layer status %+v, want index source %q", ls, tc.wantSource)
			}
			if got := len(reg.since(mark, blobGets(z.digest))); got != tc.wantZtocGets {
				t.Errorf("zTOC GETs = %d, want %d", got, tc.wantZtocGets)
			}
			fullGets := reg.since(mark, func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng == "" })
			if len(fullGets) != 0 {
				t.Errorf("the layer blob was fetched whole %d times, want 0 (an index exists)", len(fullGets))
			}
			tagGets := reg.since(mark, func(r reqRecord) bool {
				return r.kind == "manifests" && r.target == strings.Replace(img.digest.String(), ":", "-", 1)
			})
			if got := len(tagGets) > 0; got != tc.wantTagFallback {
				t.Errorf("referrers tag asked for = %v, want %v", got, tc.wantTagFallback)
			}
			// The zTOC is in the local store now, whatever its origin: for
			// every image when it was (built or verified) here, for this
			// repository only when it came from the registry.
			blob, mapping := localArtifacts(t, root, l.digest, z.digest)
			scoped := scopedMapping(t, root, img.named.Name(), l.digest)
			if trusted := tc.wantSource == "local"; !blob || mapping != trusted || scoped == trusted {
				t.Errorf("local store after lookup: zTOC %v, mapping for every image %v, for this repository %v; want the zTOC and the mapping for %s",
					blob, mapping, scoped, map[bool]string{true: "every image", false: "this repository"}[trusted])
			}
			if _, ls := s.status(t, l.digest); ls.Verified != (tc.wantSource == "local") {
				t.Errorf("verified = %v for an index from %s", ls.Verified, tc.wantSource)
			}
			// Reading every file of an unverified index proves every
			// checkpoint first: the layer ends up verified.
			checkAllFiles(t, lv, l, 100<<10)
			if _, ls := s.status(t, l.digest); !ls.Verified {
				t.Errorf("verified = false after every file of the layer was read")
			}
		})
	}
}

// TestLookupBuildSync indexes an unindexed layer while the lookup waits and
// caches its spans in the same pass: reading every file afterwards asks the
// registry for nothing.
func TestLookupBuildSync(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 2, 500, 300)
	img := reg.pushImage(t, "app/sync", "v1", []*testLayer{l}, imageOptions{})
	s := newTestStore(t, reg, nil, Options{})

	mark := reg.mark()
	lv := s.mustLookup(t, img.ref, l.digest)
	full := reg.since(mark, func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng == "" })
	if len(full) != 1 {
		t.Errorf("whole-blob GETs of the layer during the lookup = %d, want 1", len(full))
	}
	_, ls := s.status(t, l.digest)
	if ls == nil || ls.IndexSource != "built" || !ls.Verified || ls.SpansCached != ls.Spans || ls.Spans < 8 {
		t.Fatalf("layer status %+v, want built, verified, every one of >= 8 spans cached", ls)
	}

	mark = reg.mark()
	checkAllFiles(t, lv, l, 64<<10)
	b, size := lv.Blob()
	buf := make([]byte, size)
	if n, err := b.ReadAt(buf, 0); n != int(size) || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("blob ReadAt = %d, %v, want %d", n, err, size)
	}
	if string(buf) != string(l.blob) {
		t.Fatal("the blob file differs from the layer blob")
	}
	if got := reg.since(mark, anyBlobGet); len(got) != 0 {
		t.Errorf("blob GETs after an on-demand build = %d (%+v), want 0", len(got), got)
	}
	// The build wrote the image's SOCI index: another store on the same
	// root finds the layer locally.
	if blob, mapping := localArtifacts(t, s.root, l.digest, mustZtocDigest(t, s, l.digest)); !blob || !mapping {
		t.Errorf("local store after the build: zTOC %v, mapping %v, want both", blob, mapping)
	}
}

// mustZtocDigest returns the zTOC digest of a served layer.
func mustZtocDigest(t testing.TB, s *testStore, d digest.Digest) digest.Digest {
	t.Helper()
	l := s.anyLayer(d)
	if l == nil {
		t.Fatalf("layer %s not known", d)
	}
	return l.ztocDigest
}

// TestLookupBuildBackground answers "not served" at once and indexes the
// layer for the next lookup, which is served from the cached spans.
func TestLookupBuildBackground(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 3, 400, 200)
	img := reg.pushImage(t, "app/bg", "v1", []*testLayer{l}, imageOptions{})
	s := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "background" }, Options{})

	_, err := s.lookup(t, img.ref, l.digest)
	if !errors.Is(err, ErrNoIndex) {
		t.Fatalf("first Lookup = %v, want ErrNoIndex", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		lv, err := s.lookup(t, img.ref, l.digest)
		if err == nil {
			mark := reg.mark()
			checkAllFiles(t, lv, l, 128<<10)
			if got := reg.since(mark, anyBlobGet); len(got) != 0 {
				t.Errorf("blob GETs after a background build = %d, want 0", len(got))
			}
			break
		}
		if !errors.Is(err, ErrNoIndex) {
			t.Fatalf("Lookup during the background build = %v, want ErrNoIndex", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the layer was not served within 30s of a background build")
		}
		time.Sleep(20 * time.Millisecond)
	}
	full := reg.since(0, func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng == "" })
	if len(full) != 1 {
		t.Errorf("whole-blob GETs = %d, want 1 (one background build)", len(full))
	}
}

// TestLookupNotServed checks every reason a layer is left to the host.
func TestLookupNotServed(t *testing.T) {
	reg := newTestRegistry(t)
	big := stdLayer(t, 4, 100, 50)
	small := newTestLayer(t, []testFile{{name: "tiny", typ: '0', data: []byte("tiny")}})
	zstd := &testLayer{blob: append([]byte{0x28, 0xb5, 0x2f, 0xfd}, make([]byte, 40<<10)...),
		mediaType: "application/vnd.oci.image.layer.v1.tar+zstd"}
	zstd.digest, zstd.diffID = digest.FromBytes(zstd.blob), digest.FromString("zstd-diff")
	zstdAsGzip := &testLayer{blob: append([]byte{0x28, 0xb5, 0x2f, 0xfd}, make([]byte, 50<<10)...),
		mediaType: big.mediaType}
	zstdAsGzip.digest, zstdAsGzip.diffID = digest.FromBytes(zstdAsGzip.blob), digest.FromString("zstd-diff2")
	img := reg.pushImage(t, "app/mixed", "v1", []*testLayer{big, small, zstd, zstdAsGzip}, imageOptions{})
	down := httptest.NewServer(http.NotFoundHandler())
	downHost := strings.TrimPrefix(down.URL, "http://")
	down.Close()

	tests := []struct {
		name     string
		onDemand string
		ref      string
		layer    digest.Digest
		want     error // nil: any error
	}{
		{"small layer", "sync", img.ref, small.digest, ErrNotServed},
		{"zstd media type", "sync", img.ref, zstd.digest, ErrNotServed},
		{"zstd bytes labeled gzip", "sync", img.ref, zstdAsGzip.digest, ztoc.ErrUnsupportedCompression},
		{"unknown digest", "sync", img.ref, digest.FromString("not a layer"), ErrNotServed},
		{"invalid digest", "sync", img.ref, digest.Digest("sha256:xyz"), ErrNotServed},
		{"bad reference", "sync", "UPPER/Case::x", big.digest, ErrNotServed},
		{"unknown layer without reference", "sync", "", big.digest, ErrNotServed},
		{"no index, on_demand off", "off", img.ref, big.digest, ErrNoIndex},
		{"registry down", "sync", downHost + "/app/mixed:v1", big.digest, nil},
		{"unknown tag", "sync", reg.host + "/app/mixed:nope", big.digest, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t, reg, func(c *config.Config) {
				c.Index.OnDemand = tc.onDemand
				c.Registry.Insecure = append(c.Registry.Insecure, downHost)
				c.Registry.MaxRetries = 0
			}, Options{})
			start := time.Now()
			lv, err := s.lookup(t, tc.ref, tc.layer)
			if err == nil || lv != nil {
				t.Fatalf("Lookup(%q, %s) = %v, %v, want not served", tc.ref, tc.layer, lv, err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Lookup(%q, %s) = %v, want %v", tc.ref, tc.layer, err, tc.want)
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("Lookup took %s, want an answer within 15s", took)
			}
			st, _ := s.status(t, tc.layer)
			if len(st.Layers) != 0 {
				t.Errorf("status lists %d layers after a failed lookup, want 0", len(st.Layers))
			}
			if len(spanFiles(t, s.root, tc.layer)) != 0 {
				t.Errorf("spans of %s cached after a failed lookup", tc.layer)
			}
		})
	}
}

// TestLookupInfo checks the info file for both identities.
func TestLookupInfo(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 5, 100, 50)
	img := reg.pushImage(t, "app/info", "v1", []*testLayer{l}, imageOptions{})
	s := newTestStore(t, reg, nil, Options{})
	tests := []struct {
		ref  string
		want map[string]any
	}{
		{img.ref, map[string]any{
			"compressed-diff-digest": l.digest.String(), "diff-digest": l.diffID.String(),
			"compressed-size": float64(len(l.blob)), "diff-size": float64(len(l.tar)), "compression": float64(2)}},
		{TOCRefPrefix + img.ref, map[string]any{
			"toc-digest": l.digest.String(), "compressed-size": float64(len(l.blob)), "diff-size": float64(len(l.tar)),
			"compression": float64(2), "flags": map[string]any{ExpectedLayerDiffIDFlag: l.diffID.String()}}},
	}
	for _, tc := range tests {
		lv := s.mustLookup(t, tc.ref, l.digest)
		data, err := lv.Info()
		if err != nil {
			t.Fatalf("Info: %v", err)
		}
		var got map[string]any
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("info %s: %v", data, err)
		}
		gotJSON, _ := json.Marshal(got)
		wantJSON, _ := json.Marshal(tc.want)
		if string(gotJSON) != string(wantJSON) {
			t.Errorf("Lookup(%q) info = %s, want %s", tc.ref, gotJSON, wantJSON)
		}
	}
}

// TestTransientFailureKeepsIndex fails the lookup's range read of a layer
// whose zTOC is in the local store (the registry is down for blobs): the
// layer is not served, but the zTOC stays, and once the registry is back the
// layer is served from it without fetching or building anything again.
func TestTransientFailureKeepsIndex(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 6, 200, 100)
	cfg := testConfig(t.TempDir(), reg.host)
	cfg.Registry.MaxRetries = 0
	img := reg.pushImage(t, "app/flaky", "v1", []*testLayer{l}, imageOptions{})
	z := buildZtoc(t, l, nil)
	putLocalZtoc(t, cfg.RootDir, z)
	s := openStore(t, cfg, Options{})
	reg.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+l.digest.String()) {
			http.Error(w, "backend unavailable", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	if _, err := s.lookup(t, img.ref, l.digest); err == nil {
		t.Fatal("Lookup succeeded while the registry fails every blob read")
	}
	if blob, mapping := localArtifacts(t, s.root, l.digest, z.digest); !blob || !mapping {
		t.Errorf("after a transient failure: local zTOC %v, mapping %v, want both kept", blob, mapping)
	}
	reg.setFault(nil)
	mark := reg.mark()
	lv := s.mustLookup(t, img.ref, l.digest)
	if _, ls := s.status(t, l.digest); ls == nil || ls.IndexSource != "local" {
		t.Errorf("status %+v, want the layer served from the local zTOC", ls)
	}
	full := reg.since(mark, func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng == "" })
	if len(full) != 0 {
		t.Errorf("the layer was fetched whole %d times (indexed again), want 0", len(full))
	}
	checkAllFiles(t, lv, l, 1<<20)
}

// TestUncompressedLayer serves a plain tar layer built on demand.
func TestUncompressedLayer(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 7, 300, 100)
	l.blob, l.digest, l.mediaType = l.tar, l.diffID, "application/vnd.oci.image.layer.v1.tar"
	img := reg.pushImage(t, "app/tar", "v1", []*testLayer{l}, imageOptions{})
	s := newTestStore(t, reg, nil, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	mark := reg.mark()
	checkAllFiles(t, lv, l, 100<<10)
	b, size := lv.Blob()
	all := make([]byte, size)
	if n, err := b.ReadAt(all, 0); n != len(l.tar) || err != nil || string(all) != string(l.tar) {
		t.Errorf("blob ReadAt = %d, %v, want the %d-byte tar", n, err, len(l.tar))
	}
	if got := reg.since(mark, anyBlobGet); len(got) != 0 {
		t.Errorf("blob GETs after an on-demand build = %d, want 0", len(got))
	}
	data, _ := lv.Info()
	if !strings.Contains(string(data), `"compressed-diff-digest":"`+l.digest.String()) || strings.Contains(string(data), `"compression"`) {
		t.Errorf("info %s, want the tar's digest and no compression", data)
	}
}

// TestLookupSharedStore builds a layer on one machine, which shares the
// zTOC through the fleet's artifact repository; a second machine finds it
// there instead of indexing the layer again.
func TestLookupSharedStore(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 8, 300, 100)
	img := reg.pushImage(t, "app/fleet", "v1", []*testLayer{l}, imageOptions{})
	shared := func(c *config.Config) { c.Artifacts.SharedRepository = reg.host + "/lazypull/artifacts" }
	a := newTestStore(t, reg, shared, Options{})
	a.mustLookup(t, img.ref, l.digest)
	// The uploads run in the background (canceled by Close).
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(metricsText(t, a), "lazypull_artifacts_shared_total 2") {
		if time.Now().After(deadline) {
			t.Fatalf("machine A shared %q within 20s, want 2 uploads (layer zTOC, image index)",
				grepLines(metricsText(t, a), "lazypull_artifacts_shared_total "))
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.closeStore()

	// Machine B proves the shared index's checkpoints (the default): the
	// proof hands over every window from the layer's own stream, none is
	// fetched. A machine whose operator vouches for the repository's
	// indexes fetches the windows with the spans read, range by range.
	for _, trusted := range []bool{false, true} {
		b := newTestStore(t, reg, func(c *config.Config) {
			shared(c)
			if trusted {
				c.Verify.TrustIndexesFor = []string{reg.host + "/app/fleet"}
			}
		}, Options{})
		mark := reg.mark()
		lv := b.mustLookup(t, img.ref, l.digest)
		if _, ls := b.status(t, l.digest); ls == nil || ls.IndexSource != "shared" {
			t.Errorf("trusted=%v: machine B status %+v, want the zTOC from the shared store", trusted, ls)
		}
		full := reg.since(mark, func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng == "" })
		if len(full) != 0 {
			t.Errorf("trusted=%v: machine B fetched the layer whole %d times, want 0", trusted, len(full))
		}
		// The index is in lazypull's native layout: machine B fetched its
		// meta whole, its windows at most with the spans read.
		layer := b.anyLayer(l.digest)
		wd, _, native := layer.idx.(*ztocIndex).x.NativeWindows()
		if !native {
			t.Fatal("the shared index is not in the native layout")
		}
		isWindows := func(r reqRecord) bool {
			return r.kind == "blobs" && r.target == wd.String() && r.method == http.MethodGet
		}
		if got := reg.since(mark, isWindows); len(got) != 0 {
			t.Errorf("trusted=%v: machine B fetched the windows %d times before reading, want 0", trusted, len(got))
		}
		checkAllFiles(t, lv, l, 1<<20)
		wins := reg.since(mark, isWindows)
		switch {
		case trusted && len(wins) == 0:
			t.Error("machine B read the layer through a vouched-for index without fetching a window")
		case !trusted && len(wins) != 0:
			t.Errorf("machine B fetched windows %d times while proving the index, which yields them", len(wins))
		}
		for _, r := range wins {
			if r.rng == "" {
				t.Errorf("trusted=%v: machine B fetched the whole windows blob: %+v", trusted, r)
			}
		}
		b.closeStore()
	}
}

// grepLines returns the lines of text containing s.
func grepLines(text, s string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestUnusableLocalZtoc maps a layer to the zTOC of another layer: the
// lookup drops it, and the next lookup indexes the layer itself.
func TestUnusableLocalZtoc(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 9, 300, 100)
	other := buildZtoc(t, stdLayer(t, 99, 100, 10), nil)
	img := reg.pushImage(t, "app/mismatch", "v1", []*testLayer{l}, imageOptions{})
	cfg := testConfig(t.TempDir(), reg.host)
	putLocalZtoc(t, cfg.RootDir, &testZtoc{layer: l, data: other.data, digest: other.digest})
	s := openStore(t, cfg, Options{})
	if _, err := s.lookup(t, img.ref, l.digest); err == nil {
		t.Fatal("Lookup with the zTOC of another layer succeeded")
	}
	if blob, mapping := localArtifacts(t, s.root, l.digest, other.digest); blob || mapping {
		t.Errorf("unusable zTOC %v, mapping %v after the lookup, want both dropped", blob, mapping)
	}
	lv := s.mustLookup(t, img.ref, l.digest)
	if _, ls := s.status(t, l.digest); ls == nil || ls.IndexSource != "built" {
		t.Errorf("status %+v, want the layer indexed on demand", ls)
	}
	checkAllFiles(t, lv, l, 1<<20)
}

func mustResolve(t testing.TB, s *testStore, ref string) *remote.Image {
	t.Helper()
	img, err := s.resolveImage(context.Background(), mustNamed(t, ref))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestPushToImageRegistry: with artifacts.push_to_image_registry, an index
// built on demand is pushed to the image's repository as a SOCI referrer,
// and another machine (a store with nothing local, no shared repository)
// finds it there.
func TestPushToImageRegistry(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 6, 500, 200)
	img := reg.pushImage(t, "app/pushed", "v1", []*testLayer{l}, imageOptions{})
	a := newTestStore(t, reg, func(c *config.Config) { c.Artifacts.PushToImageRegistry = true }, Options{})
	a.mustLookup(t, img.ref, l.digest)
	zd := mustZtocDigest(t, a, l.digest)
	waitFor := time.Now().Add(10 * time.Second)
	for {
		refs, err := a.client.Referrers(context.Background(), img.named, img.digest, ztoc.MediaTypeSociIndexV1)
		if err == nil && len(refs) == 1 {
			break
		}
		if time.Now().After(waitFor) {
			t.Fatalf("no SOCI referrer pushed for %s: %v, %v", img.ref, refs, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Pushed in SOCI's format (windows inline), for every SOCI client, and
	// in the native layout beside it, named by an annotation.
	soci, native, err := a.sociZtoc(zd)
	if err != nil || !native {
		t.Fatalf("sociZtoc = %v, native %v", err, native)
	}
	e := a.searchRegistryIndex(context.Background(), img.named, mustResolve(t, a, img.ref))
	if e.err != nil {
		t.Fatal(e.err)
	}
	idx := e.idx
	zdesc, ok := idx.ZtocFor(l.digest)
	if !ok || zdesc.Digest != digest.FromBytes(soci) || zdesc.Annotations[ztoc.AnnotationNativeZtoc] != zd.String() {
		t.Errorf("pushed SOCI index names %+v, want the SOCI zTOC %s with the native one %s beside it", zdesc, digest.FromBytes(soci), zd)
	}
	if x, err := ztoc.NewLayerIndexFromBytes(soci); err != nil || x.Ztoc().Version != ztoc.Version {
		t.Errorf("the pushed zTOC is not in SOCI's format: %v", err)
	}
	b := newTestStore(t, reg, func(c *config.Config) { c.Index.OnDemand = "off" }, Options{})
	mark := reg.mark()
	lv := b.mustLookup(t, img.ref, l.digest)
	if _, ls := b.status(t, l.digest); ls.IndexSource != "registry" || mustZtocDigest(t, b, l.digest) != zd {
		t.Errorf("second store: %+v, want the native zTOC %s found in the registry", ls, zd)
	}
	if got := reg.since(mark, blobGets(digest.FromBytes(soci))); len(got) != 0 {
		t.Errorf("the second store fetched the SOCI zTOC %d times, want 0 (the native meta is smaller)", len(got))
	}
	checkAllFiles(t, lv, l, 1<<20)

	// Off (the default): nothing is pushed.
	img2 := reg.pushImage(t, "app/notpushed", "v1", []*testLayer{stdLayer(t, 7, 300, 100)}, imageOptions{})
	c := newTestStore(t, reg, nil, Options{})
	c.mustLookup(t, img2.ref, img2.layers[0].digest)
	time.Sleep(200 * time.Millisecond)
	if refs, _ := c.client.Referrers(context.Background(), img2.named, img2.digest, ztoc.MediaTypeSociIndexV1); len(refs) != 0 {
		t.Errorf("referrers pushed with push_to_image_registry off: %v", refs)
	}
}
