package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lazypull/lazypull/tests/imagegen"
	"github.com/lazypull/lazypull/tests/testenv"
)

// readOnly serves a registry read-only (as a public registry or a mirror is
// to us): every write answers 405.
func readOnly(t *testing.T, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, `{"errors":[{"code":"DENIED","message":"read-only registry"}]}`, http.StatusMethodNotAllowed)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// tags lists the tags of repo in a registry.
func tags(t *testing.T, registryURL, repo string) []string {
	t.Helper()
	resp, err := http.Get(registryURL + "/v2/" + repo + "/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Tags []string `json:"tags"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out.Tags
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestIndexOnDemandAndShareAcrossMachines: an image with no index anywhere,
// in a registry we cannot write to, is indexed by the first machine while
// podman pulls it (the pull is served lazily from the spans cached on the
// way, and the tree equals the image's), the index lands in the fleet's
// artifact registry, and a second machine — an empty local store, sharing
// only that artifact registry — pulls lazily (< 5 % fetched) without
// indexing again.
func TestIndexOnDemandAndShareAcrossMachines(t *testing.T) {
	img := cachedImage(t, imagegen.E2E())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	push(t, reg, img, "lazypull/unindexed", "v1")
	imageHost := readOnly(t, reg.URL)
	proxy := testenv.StartCountingProxy(t, "http://"+imageHost)
	ref := proxy.Host + "/lazypull/unindexed:v1"
	artifacts := testenv.StartRegistry(t, testenv.RegistryOptions{})
	shared := artifacts.Host + "/lazypull/artifacts"
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	indexed := indexedLayers(img, 10<<20)
	config := func() map[string]any {
		return map[string]any{
			"registry": map[string]any{"insecure": []string{proxy.Host, artifacts.Host}},
			"index":    map[string]any{"on_demand": "sync"},
			"prefetch": map[string]any{"enabled": false}, "verification": map[string]any{"enabled": false},
			"artifacts": map[string]any{"shared_repository": shared},
		}
	}

	// Machine 1: cold pull, indexing on the way.
	d1 := testenv.StartDaemon(t, testenv.DaemonOptions{Config: config()})
	p1 := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{proxy.Host}, StorageOpts: []string{d1.ALSOption()}})
	start := time.Now()
	if _, err := p1.Pull(ref); err != nil {
		t.Fatalf("cold lazy pull: %v\n%s", err, d1.LogTail(30))
	}
	t.Logf("cold pull (indexing %d layers) took %s, fetched %s", len(indexed), time.Since(start).Round(time.Millisecond), mib(proxy.Stats().BlobBytes()))
	if links := alsDiffLinks(t, p1.Root, d1.MountPoint); len(links) != len(indexed) {
		t.Fatalf("%d layer diffs point into the store, want %d", len(links), len(indexed))
	}
	st := d1.Status(t)
	for _, l := range st.Layers {
		if l.IndexSource != "built" || !l.Verified || l.SpansCached != l.Spans {
			t.Errorf("layer %s: index %q, verified %v, %d/%d spans cached; want built on demand, verified, all cached", l.Digest, l.IndexSource, l.Verified, l.SpansCached, l.Spans)
		}
	}
	// Serving after indexing costs no registry traffic: the spans were cached
	// while the layer streamed.
	proxy.Reset()
	compareTrees(t, p1, ref, want, "rootfs of the image indexed on demand")
	if got := proxy.Stats().BlobBytes(); got != 0 {
		t.Errorf("reading the whole image after indexing fetched %d blob bytes, want 0", got)
	}

	// The artifacts reach the shared registry (uploads run in the background).
	waitFor(t, 2*time.Minute, "artifacts in the shared registry", func() bool {
		n := 0
		for _, tag := range tags(t, artifacts.URL, "lazypull/artifacts") {
			if strings.HasPrefix(tag, "lazypull-layer-") {
				n++
			}
		}
		return n >= len(indexed)
	})

	// Machine 2: empty local store, only the shared artifact registry.
	d2 := testenv.StartDaemon(t, testenv.DaemonOptions{Config: config()})
	p2 := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{proxy.Host}, StorageOpts: []string{d2.ALSOption()}})
	proxy.Reset()
	start = time.Now()
	if _, err := p2.Pull(ref); err != nil {
		t.Fatalf("second-machine pull: %v\n%s", err, d2.LogTail(30))
	}
	fetched := proxy.Stats().BlobBytes()
	t.Logf("second machine: pull took %s, fetched %s from the image registry (%.2f %%)", time.Since(start).Round(time.Millisecond), mib(fetched), 100*float64(fetched)/float64(img.CompressedSize()))
	if fetched*100 >= img.CompressedSize()*5 {
		t.Errorf("second machine fetched %d bytes, want < 5 %% of %d", fetched, img.CompressedSize())
	}
	for _, l := range d2.Status(t).Layers {
		if l.IndexSource != "shared" {
			t.Errorf("second machine: layer %s index came from %q, want the shared store", l.Digest, l.IndexSource)
		}
	}
	paths := append(regularFiles(want, "usr/lib", 5, false), regularFiles(want, "var/top", 3, false)...)
	checkFilesInContainer(t, p2, ref, want, paths)
}

// TestPrefetchWholeLayer: after a lazy pull, the background prefetch brings
// every span of a ≥ 300 MB layer, verifies the layer as a whole, and from
// then on reads cause no registry request at all.
func TestPrefetchWholeLayer(t *testing.T) {
	o := imagegen.Options{Name: "prefetch", Seed: 11, Layers: []imagegen.LayerSpec{
		{Compression: imagegen.GzipParallel, Dir: "usr", Busybox: true, SmallFiles: 50},
		{Compression: imagegen.GzipParallel, Dir: "data", SmallFiles: 200, Random: []int64{200 << 20, 110 << 20}, Compressible: []int64{40 << 20}},
	}}
	img := cachedImage(t, o)
	var big imagegen.Layer
	for _, l := range img.Layers {
		if l.Size > big.Size {
			big = l
		}
	}
	if big.Size < 300e6 {
		t.Fatalf("the biggest layer has %d bytes, the test wants >= 300 MB", big.Size)
	}
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	proxy := testenv.StartCountingProxy(t, reg.URL)
	push(t, reg, img, "lazypull/prefetch", "v1")
	ref := proxy.Host + "/lazypull/prefetch:v1"
	runLazypull(t, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}}, "index", "--push", reg.Ref("lazypull/prefetch", "v1"))

	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{proxy.Host}},
		"index":    map[string]any{"min_layer_size": "1MiB"},
	}})
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{proxy.Host}, StorageOpts: []string{d.ALSOption()}})
	start := time.Now()
	if _, err := p.Pull(ref); err != nil {
		t.Fatalf("lazy pull: %v", err)
	}
	var done time.Duration
	waitFor(t, 5*time.Minute, "prefetch of every layer", func() bool {
		for _, l := range d.Status(t).Layers {
			if !strings.HasPrefix(l.Prefetch, "done") || !l.Verified {
				return false
			}
		}
		done = time.Since(start)
		return true
	})
	st := d.Status(t)
	for _, l := range st.Layers {
		if l.Digest == big.Digest.String() {
			t.Logf("layer %s (%s): %s, %d spans, verified %v; everything prefetched %s after the pull started",
				l.Digest[:19], mib(l.Size), l.Prefetch, l.Spans, l.Verified, done.Round(time.Millisecond))
			if l.SpansCached != l.Spans {
				t.Errorf("%d of %d spans cached after prefetch", l.SpansCached, l.Spans)
			}
		}
	}
	proxy.Reset()
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	checkFilesInContainer(t, p, ref, want, regularFiles(want, "data", 4, true))
	if s := proxy.Stats(); s.BlobBytes() != 0 || s.ByKind[testenv.KindRange].Requests != 0 {
		t.Errorf("reads after the prefetch sent %d range requests (%d blob bytes), want none", s.ByKind[testenv.KindRange].Requests, s.BlobBytes())
	}
}

// TestEvictionWhileReading: with a span cache far smaller than the images,
// a container reads a whole image while the spans of an image no longer in
// use are evicted: no read fails, the cap holds, and the spans of the image
// in use are not evicted for it.
func TestEvictionWhileReading(t *testing.T) {
	img := cachedImage(t, imagegen.E2E())
	reg := testenv.StartRegistry(t, testenv.RegistryOptions{})
	push(t, reg, img, "lazypull/evict", "v1")
	other := cachedImage(t, imagegen.Small())
	push(t, reg, other, "lazypull/small", "v1")
	for _, r := range []string{reg.Ref("lazypull/evict", "v1"), reg.Ref("lazypull/small", "v1")} {
		runLazypull(t, map[string]any{"registry": map[string]any{"insecure": []string{reg.Host}}, "index": map[string]any{"min_layer_size": "100KiB"}}, "index", "--push", r)
	}
	const capBytes = 48 << 20
	d := testenv.StartDaemon(t, testenv.DaemonOptions{Config: map[string]any{
		"registry": map[string]any{"insecure": []string{reg.Host}},
		"index":    map[string]any{"min_layer_size": "100KiB"},
		"cache":    map[string]any{"span_cache_size": fmt.Sprint(capBytes)},
		"prefetch": map[string]any{"enabled": false},
		// The indexes were pushed to the test's own registry: random access
		// without the checkpoint proof (which would stream every layer
		// through the small cache first), so the test is about eviction.
		"verification": map[string]any{"enabled": false, "trust_indexes_for": []string{reg.Host + "/"}},
	}})
	p := testenv.NewPodman(t, testenv.PodmanOptions{InsecureRegistries: []string{reg.Host}, StorageOpts: []string{d.ALSOption()}})
	small := reg.Ref("lazypull/small", "v1")
	if _, err := p.Pull(small); err != nil {
		t.Fatal(err)
	}
	smallWant, err := other.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, p, small, smallWant, "small image")
	before := d.Status(t).Cache
	if _, _, err := p.Run("rmi", small); err != nil {
		t.Fatal(err)
	}
	ref := reg.Ref("lazypull/evict", "v1")
	if _, err := p.Pull(ref); err != nil {
		t.Fatal(err)
	}
	want, err := img.ExpectedTree()
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, p, ref, want, "image read under a small span cache")
	st := d.Status(t)
	if st.Reads.Errors != 0 {
		t.Errorf("%d reads failed", st.Reads.Errors)
	}
	if st.Cache.SpanBytes > capBytes {
		t.Errorf("span cache holds %d bytes, cap %d", st.Cache.SpanBytes, capBytes)
	}
	if st.Cache.SpanEvictions == 0 {
		t.Errorf("no span evicted (cache before: %+v, after: %+v); the small image's spans should have made room", before, st.Cache)
	}
	t.Logf("span cache: %d spans, %s of %s cap, %d evictions, %d hits, %d misses", st.Cache.SpanEntries, mib(st.Cache.SpanBytes), mib(capBytes), st.Cache.SpanEvictions, st.Cache.SpanHits, st.Cache.SpanMisses)
	// `lazypull prune` frees what is not in use, and only that.
	if out, err := d.Run("prune"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("prune: %s", strings.TrimSpace(out))
	}
	compareTrees(t, p, ref, want, "image after prune")
}
