package layerstore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"
	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/control"
)

// TestStatusMoves follows the status through lookup, reads, use and
// release.
func TestStatusMoves(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 90, 300, 100)
	s, img, z := servedFromLocal(t, reg, l, nil, Options{})

	st0, _ := s.status(t, l.digest)
	if st0.Version != "test" || st0.RootDir != s.root || len(st0.Layers) != 0 || st0.Cache.ArtifactBlobs != 1 {
		t.Fatalf("status before any lookup %+v, want version test, root %s, no layer, 1 artifact", st0, s.root)
	}

	lv := s.mustLookup(t, img.ref, l.digest)
	st1, ls := s.status(t, l.digest)
	named, err := reference.ParseNormalizedNamed(img.ref)
	if err != nil {
		t.Fatal(err)
	}
	wantLayer := control.LayerStatus{
		Digest: l.digest.String(), Refs: []string{img.ref}, Size: int64(len(l.blob)),
		Spans: z.openIndex(t).NumSpans(), Views: 1, Prefetch: "verified", Verified: true, IndexSource: "local", Format: "gzip",
		Endpoint: named.Name(), // the lookup read the gzip header from the registry
	}
	if ls == nil {
		t.Fatal("layer not in status after lookup")
	}
	if _, err := time.Parse(time.RFC3339, ls.FirstMountedAt); err != nil {
		t.Errorf("mounted_at %q: %v", ls.FirstMountedAt, err)
	}
	got := *ls
	got.FirstMountedAt, got.BytesFetched = "", 0
	if fmt.Sprint(got) != fmt.Sprint(wantLayer) {
		t.Errorf("layer status after lookup\n got %+v\nwant %+v", got, wantLayer)
	}
	if st1.Registry.Requests <= st0.Registry.Requests || st1.Registry.ManifestBytes == 0 {
		t.Errorf("registry stats after lookup %+v, want requests and manifest bytes counted", st1.Registry)
	}

	c, _ := lv.Content()
	i := entryIndex(t, c, "data/random.bin")
	want, _ := l.content("data/random.bin")
	for range 2 {
		if _, err := readFile(context.Background(), c, i, len(want), 100<<10); err != nil {
			t.Fatal(err)
		}
	}
	st2, ls2 := s.status(t, l.digest)
	moved := []struct {
		what        string
		before, now int64
	}{
		{"reads", st1.Reads.Count, st2.Reads.Count},
		{"read bytes", st1.Reads.Bytes, st2.Reads.Bytes},
		{"range bytes", st1.Registry.RangeBytes, st2.Registry.RangeBytes},
		{"span misses", st1.Cache.SpanMisses, st2.Cache.SpanMisses},
		{"span cache bytes", st1.Cache.SpanBytes, st2.Cache.SpanBytes},
		{"span cache hits (the second read: inflated spans on disk)", st1.Cache.SpanHits, st2.Cache.SpanHits},
		{"layer reads", ls.ReadsServed, ls2.ReadsServed},
		{"layer bytes fetched", ls.BytesFetched, ls2.BytesFetched},
		{"layer spans cached", int64(ls.SpansCached), int64(ls2.SpansCached)},
	}
	for _, m := range moved {
		if m.now <= m.before {
			t.Errorf("%s did not grow with reads: %d -> %d", m.what, m.before, m.now)
		}
	}
	if got, want := st2.Reads.Bytes-st1.Reads.Bytes, int64(2*len(want)); got != want {
		t.Errorf("read bytes grew by %d, want %d", got, want)
	}
	if st2.Reads.LatencyP50 <= 0 || st2.Reads.LatencyP99 < st2.Reads.LatencyP50 {
		t.Errorf("read latency p50 %s p99 %s, want 0 < p50 <= p99", st2.Reads.LatencyP50, st2.Reads.LatencyP99)
	}

	s.Use(img.ref, l.digest)
	s.Use(img.ref, l.digest)
	if _, ls := s.status(t, l.digest); ls.InUse != 2 {
		t.Errorf("in use after two Use = %d, want 2", ls.InUse)
	}
	s.Release(img.ref, l.digest)
	s.Release(img.ref, l.digest)
	s.Release(img.ref, l.digest) // one too many: ignored
	if _, ls := s.status(t, l.digest); ls.InUse != 0 {
		t.Errorf("in use after releasing = %d, want 0", ls.InUse)
	}
}

// TestMetricsNames scrapes the metrics after a served and a refused lookup
// and reads.
func TestMetricsNames(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 91, 200, 100)
	s, img, _ := servedFromLocal(t, reg, l, nil, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	checkAllFiles(t, lv, l, 1<<20)
	if _, err := s.lookup(t, img.ref, digest.Digest("sha256:"+strings.Repeat("0", 64))); err == nil {
		t.Fatal("lookup of a layer not in the image succeeded")
	}
	m := metricsText(t, s)
	for _, want := range []string{
		`lazypull_lookups_total{result="served"} 1`,
		`lazypull_lookups_total{result="not_served"} 1`,
		"lazypull_layers_indexed_total 0",
		"lazypull_artifacts_shared_total 0",
		"lazypull_read_errors_total 0",
		"lazypull_read_bytes_total ",
		"lazypull_read_latency_seconds_bucket{",
		"lazypull_read_latency_seconds_count ",
		"lazypull_prefetched_bytes_total 0",
		`lazypull_registry_bytes_total{kind="manifest"}`,
		`lazypull_registry_bytes_total{kind="range"}`,
		`lazypull_registry_bytes_total{kind="full"} 0`,
		"lazypull_registry_requests_total ",
		"lazypull_registry_retries_total 0",
		"lazypull_registry_errors_total ",
		"lazypull_span_cache_hits_total ",
		"lazypull_span_cache_misses_total ",
		"lazypull_span_cache_bytes ",
		"lazypull_span_cache_evictions_total 0",
		fmt.Sprintf(`lazypull_layer_fetched_bytes{layer="%s"}`, l.digest),
		fmt.Sprintf(`lazypull_layer_cached_ratio{layer="%s"} 1`, l.digest),
		"go_goroutines ",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
