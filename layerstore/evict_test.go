package layerstore

import (
	"context"
	"crypto/sha256"
	digest "github.com/opencontainers/go-digest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/ztoc"
)

// capWatch samples the span cache size until stopped and remembers the
// largest size seen and any sample above the cap.
type capWatch struct {
	stop     chan struct{}
	done     chan struct{}
	max      atomic.Int64
	exceeded atomic.Int64 // a size above the cap, 0 if none
}

func watchCap(t *testing.T, s *testStore) *capWatch {
	t.Helper()
	w := &capWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			st, err := s.Status(context.Background())
			if err == nil {
				w.max.Store(max(w.max.Load(), st.Cache.SpanBytes))
				if st.Cache.SpanMaxBytes > 0 && st.Cache.SpanBytes > st.Cache.SpanMaxBytes {
					w.exceeded.Store(st.Cache.SpanBytes)
				}
			}
			select {
			case <-w.stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.close)
	return w
}

func (w *capWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// TestEvictionKeepsInUse fills a small span cache with a layer in use and
// one that is not: the one in use keeps every span, the cap holds, and
// prune frees only what is not in use.
func TestEvictionKeepsInUse(t *testing.T) {
	reg := newTestRegistry(t)
	a := stdLayer(t, 70, 500, 100)
	b := stdLayer(t, 71, 500, 100)
	img := reg.pushImage(t, "app/evict", "v1", []*testLayer{a, b}, imageOptions{})
	// Room for a whole layer, compressed and inflated, and half of the
	// other.
	za, zb := buildZtoc(t, a, nil), buildZtoc(t, b, nil)
	footprint := func(l *testLayer, z *testZtoc) int64 {
		x := z.openIndex(t)
		return int64(len(l.blob)) + x.Ztoc().UncompressedArchiveSize + int64(x.NumSpans())*sha256.Size
	}
	limit := footprint(a, za) + footprint(b, zb)/2
	cfg := testConfig(t.TempDir(), reg.host)
	cfg.Cache.SpanCacheSize = config.CacheSize{Bytes: config.ByteSize(limit)}
	putLocalZtoc(t, cfg.RootDir, za)
	putLocalZtoc(t, cfg.RootDir, zb)
	s := openStore(t, cfg, Options{})
	w := watchCap(t, s)

	la := s.mustLookup(t, img.ref, a.digest)
	lb := s.mustLookup(t, img.ref, b.digest)
	s.Use(img.ref, a.digest)
	checkAllFiles(t, la, a, 1<<20)
	spansA := func() int {
		_, ls := s.status(t, a.digest)
		if ls.SpansCached > ls.Spans {
			t.Fatalf("status %+v: more spans cached than the layer has", ls)
		}
		return ls.Spans - ls.SpansCached
	}
	if missing := spansA(); missing != 0 {
		t.Fatalf("%d spans of the layer in use not cached after reading it all", missing)
	}
	for range 2 {
		checkAllFiles(t, lb, b, 64<<10)
	}
	if missing := spansA(); missing != 0 {
		t.Errorf("%d spans of the layer in use were evicted, want 0", missing)
	}
	s.settle(t)
	st, _ := s.status(t, a.digest)
	if st.Cache.SpanEvictions == 0 {
		t.Error("no span was evicted although the layers do not fit the cap")
	}

	res, err := s.Prune(context.Background(), control.PruneRequest{})
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	after, lsA := s.status(t, a.digest)
	_, lsB := s.status(t, b.digest)
	if missing := spansA(); missing != 0 || lsB.SpansCached != 0 {
		t.Errorf("after prune: %d spans of the layer in use missing, %d of the other cached; want 0 and 0", missing, lsB.SpansCached)
	}
	if res.SpanBytesFreed != st.Cache.SpanBytes-after.Cache.SpanBytes || res.SpanBytesFreed == 0 {
		t.Errorf("Prune freed %d bytes, the cache went from %d to %d", res.SpanBytesFreed, st.Cache.SpanBytes, after.Cache.SpanBytes)
	}
	if lsA.InUse != 1 {
		t.Errorf("status %+v, want in use 1", lsA)
	}

	s.Release(img.ref, a.digest)
	if _, err := s.Prune(context.Background(), control.PruneRequest{}); err != nil {
		t.Fatalf("Prune: %v", err)
	}
	after, _ = s.status(t, a.digest)
	if after.Cache.SpanBytes != 0 || after.Cache.SpanEntries != 0 {
		t.Errorf("after releasing and pruning: %d spans, %d bytes cached, want none", after.Cache.SpanEntries, after.Cache.SpanBytes)
	}
	checkAllFiles(t, la, a, 1<<20)
	w.close()
	if x := w.exceeded.Load(); x != 0 {
		t.Errorf("the span cache held %d bytes, above its cap of %d", x, limit)
	}
	if w.max.Load() < limit/2 {
		t.Errorf("the span cache never held more than %d bytes; the sampler or the test is broken", w.max.Load())
	}
}

// TestPrefetchCacheTooSmall prefetches a layer not in use that does not fit
// the span cache: prefetch stops instead of evicting its own spans over and
// over, and the cap holds.
func TestPrefetchCacheTooSmall(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 72, 2400, 100)
	limit := int64(1536 << 10)
	s, img, _ := servedFromLocal(t, reg, l, func(c *config.Config) {
		c.Prefetch.Enabled = true
		c.Verify.Enabled = true
		c.Prefetch.BatchSize = 1 << 20
		c.Cache.SpanCacheSize = config.CacheSize{Bytes: config.ByteSize(limit)}
	}, Options{})
	w := watchCap(t, s)
	lv := s.mustLookup(t, img.ref, l.digest)
	ls := s.waitLayer(t, l.digest, 10*time.Second, "prefetch stopped", func(ls *control.LayerStatus) bool {
		return strings.HasPrefix(ls.Prefetch, "stopped")
	})
	time.Sleep(500 * time.Millisecond) // anything still running shows now
	var fetched int64
	for _, r := range reg.since(0, blobGets(l.digest)) {
		fetched += r.bytes
	}
	if fetched > 2*int64(len(l.blob)) {
		t.Errorf("prefetch fetched %d bytes of a %d-byte layer that does not fit the cache", fetched, len(l.blob))
	}
	if ls.Bad != "" {
		t.Errorf("status %+v, want not bad", ls)
	}
	checkAllFiles(t, lv, l, 1<<20)
	w.close()
	if x := w.exceeded.Load(); x != 0 {
		t.Errorf("the span cache held %d bytes, above its cap of %d", x, limit)
	}
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPruneArtifacts evicts a zTOC built on demand while the image's SOCI
// index stays: the next lookup still serves the layer (built again).
func TestPruneArtifacts(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 73, 300, 100)
	img := reg.pushImage(t, "app/prune", "v1", []*testLayer{l}, imageOptions{})
	cfg := testConfig(t.TempDir(), reg.host)
	s1 := openStore(t, cfg, Options{})
	s1.mustLookup(t, img.ref, l.digest)
	zd := mustZtocDigest(t, s1, l.digest)
	s1.closeStore()

	// The zTOC (in the native layout: meta and windows) is the least
	// recently used artifact; the SOCI index of the image, written after
	// it, stays.
	old := time.Now().Add(-time.Hour)
	blobPath := func(d digest.Digest) string {
		return filepath.Join(cfg.RootDir, "artifacts", "cas", d.Algorithm().String()+"-"+d.Encoded(), "blob")
	}
	x, err := ztoc.NewLayerIndexFromBytes(mustRead(t, blobPath(zd)))
	if err != nil {
		t.Fatal(err)
	}
	wd, wsize, native := x.NativeWindows()
	if !native {
		t.Fatal("a zTOC built here is not in the native layout")
	}
	var zsize int64
	for _, p := range []string{blobPath(zd), blobPath(wd)} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(p)
		zsize += fi.Size()
	}
	if zsize <= wsize {
		t.Fatalf("zTOC meta and windows %d bytes, windows alone %d", zsize, wsize)
	}
	s2 := openStore(t, cfg, Options{})
	st, _ := s2.status(t, l.digest)
	if st.Cache.ArtifactBlobs != 3 {
		t.Fatalf("%d artifact blobs after an on-demand build, want 3 (zTOC meta and windows, SOCI index)", st.Cache.ArtifactBlobs)
	}
	res, err := s2.Prune(context.Background(), control.PruneRequest{SpanTarget: 1 << 40, ArtifactTarget: st.Cache.ArtifactBytes - zsize})
	if err != nil || res.ArtifactBytesFreed != zsize {
		t.Fatalf("Prune = %+v, %v, want the zTOC's %d bytes freed", res, err, zsize)
	}
	lv, err := s2.lookup(t, img.ref, l.digest)
	if err != nil {
		t.Fatalf("Lookup after the zTOC was pruned = %v, want the layer served", err)
	}
	checkAllFiles(t, lv, l, 1<<20)
}
