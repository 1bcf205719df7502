package layerstore

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containers/image/v5/docker/reference"

	"github.com/lazypull/lazypull/layerstore/config"
	"github.com/lazypull/lazypull/layerstore/control"
	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spans"
)

// TestPrefetchFetchesAll prefetches a layer served from an index: every
// span ends up cached in a few large range requests, the layer is
// verified, and reading it afterwards asks the registry for nothing.
func TestPrefetchFetchesAll(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 60, 1500, 300)
	var fresh atomic.Int64 // EnsureFresh calls: one before each batch
	auth := func(_ reference.Named, _ []string, base http.RoundTripper) (remote.Auth, error) {
		return freshCounter{Auth: remote.Anonymous(base), n: &fresh}, nil
	}
	s, img, _ := servedFromLocal(t, reg, l, func(c *config.Config) { c.Prefetch.Enabled = true; c.Verify.Enabled = true }, Options{Auth: auth})
	mark := reg.mark()
	lv := s.mustLookup(t, img.ref, l.digest)
	ls := s.waitLayer(t, l.digest, 30*time.Second, "prefetched and verified", func(ls *control.LayerStatus) bool {
		return prefetchDone(ls) && ls.Verified
	})
	if ls.SpansCached != ls.Spans || ls.Bad != "" {
		t.Fatalf("status %+v, want every span cached, not bad", ls)
	}
	// One ranged GET for the gzip header, the rest in batches of at most
	// prefetch.batch_size.
	gets := reg.since(mark, blobGets(l.digest))
	if max := 2 + len(l.blob)/(1<<20) + 1; len(gets) > max {
		t.Errorf("prefetch sent %d range requests for a %d-byte layer, want at most %d (coalesced batches)", len(gets), len(l.blob), max)
	}
	if got, want := fresh.Load(), int64(len(gets)-1); got < want {
		t.Errorf("credentials refreshed %d times for %d prefetch batches, want one per batch", got, want)
	}
	if !strings.Contains(ls.Prefetch, fmt.Sprintf("(%d bytes)", sumSpanBytes(t, s, l.digest))) {
		t.Errorf("prefetch status %q does not report the bytes fetched", ls.Prefetch)
	}
	mark = reg.mark()
	checkAllFiles(t, lv, l, 1<<20)
	b, size := lv.Blob()
	if n, err := b.ReadAt(make([]byte, size), 0); n != int(size) || err != nil {
		t.Fatalf("blob ReadAt = %d, %v", n, err)
	}
	if got := reg.since(mark, anyBlobGet); len(got) != 0 {
		t.Errorf("blob GETs after prefetch = %d, want 0", len(got))
	}
}

// freshCounter counts EnsureFresh calls of an Auth.
type freshCounter struct {
	remote.Auth
	n *atomic.Int64
}

func (f freshCounter) EnsureFresh(ctx context.Context, d time.Duration) error {
	f.n.Add(1)
	return f.Auth.EnsureFresh(ctx, d)
}

// sumSpanBytes is the compressed size of all spans of a served layer.
func sumSpanBytes(t testing.TB, s *testStore, d interface{ String() string }) int64 {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.layers {
		if l.digest.String() == d.String() {
			var n int64
			for id := range l.idx.Layout().NumSpans() {
				n += spanLen(l, id)
			}
			return n
		}
	}
	t.Fatalf("layer %s not served", d)
	return 0
}

// TestPrefetchYieldsToDemand holds the prefetcher while an on-demand read is
// waiting, and checks that it then starts next to the spans read.
func TestPrefetchYieldsToDemand(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 61, 800, 300)
	s, img, z := servedFromLocal(t, reg, l, func(c *config.Config) {
		c.Prefetch.Enabled = true
		c.Verify.Enabled = true
		c.Prefetch.Concurrency = 1
	}, Options{})
	x := z.openIndex(t)
	// An on-demand fetch runs (as if a container were blocked on a span)
	// from before the layer is served.
	demand := s.sched.Ticket(t.Context(), spans.Demand, 1)
	if err := demand.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer demand.Done()
	lv := s.mustLookup(t, img.ref, l.digest)
	mark := reg.mark()
	time.Sleep(300 * time.Millisecond)
	if got := reg.since(mark, anyBlobGet); len(got) != 0 {
		t.Fatalf("prefetch sent %d requests while an on-demand read waited, want 0", len(got))
	}
	if _, ls := s.status(t, l.digest); ls == nil || ls.Prefetch != "waiting" {
		t.Errorf("status %+v, want prefetch waiting", ls)
	}
	// The container reads a file in the middle of the layer.
	c, _ := lv.Content()
	i := entryIndex(t, c, "data/log.txt")
	want, _ := l.content("data/log.txt")
	got, err := readFile(t.Context(), c, i, len(want), len(want))
	if err != nil || string(got) != string(want) {
		t.Fatalf("read data/log.txt: %v (equal %v)", err, string(got) == string(want))
	}
	if got := reg.since(mark, anyBlobGet); len(got) != 1 {
		t.Fatalf("%d requests for one on-demand read while prefetch yields, want 1", len(got))
	}
	m := c.Entries()[i]
	hot := x.SpanOf(m.UncompressedOffset)
	if hot == 0 {
		t.Fatal("the file starts in span 0; the test needs a span before it")
	}
	mark = reg.mark()
	demand.Done()
	s.waitLayer(t, l.digest, 30*time.Second, "prefetched", prefetchDone)
	gets := reg.since(mark, blobGets(l.digest))
	c0, c1 := x.SpanCompressedRange(hot - 1)
	if wantRange := fmt.Sprintf("bytes=%d-%d", c0, c1-1); len(gets) == 0 || gets[0].rng != wantRange {
		t.Errorf("first prefetch request %+v, want the span next to the one read (%s)", gets[:min(len(gets), 1)], wantRange)
	}
}

// TestPrefetchBandwidth caps prefetch traffic: the layer takes about as
// long as the cap says (loosely: at least half of it).
func TestPrefetchBandwidth(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 62, 2300, 100)
	const rate = 512 << 10
	s, img, _ := servedFromLocal(t, reg, l, func(c *config.Config) {
		c.Prefetch.Enabled = true
		c.Verify.Enabled = true
		c.Prefetch.Bandwidth = rate
		c.Prefetch.BatchSize = 1 << 20 // also the burst
	}, Options{})
	start := time.Now()
	s.mustLookup(t, img.ref, l.digest)
	s.waitLayer(t, l.digest, 60*time.Second, "prefetched", prefetchDone)
	took := time.Since(start)
	want := time.Duration(float64(len(l.blob)-(1<<20)) / rate * float64(time.Second))
	if took < want/2 {
		t.Errorf("prefetch of %d bytes at %d B/s took %s, want at least %s", len(l.blob), rate, took, want/2)
	}
	// No second may see much more than the cap plus one batch.
	gets := reg.since(0, blobGets(l.digest))
	for _, g := range gets {
		var inWindow int64
		for _, h := range gets {
			if !h.at.Before(g.at) && h.at.Sub(g.at) < time.Second {
				inWindow += h.bytes
			}
		}
		if inWindow > rate+2<<20 {
			t.Errorf("%d bytes within a second of %s, want at most the cap plus a burst and a batch", inWindow, g.at.Format(time.StampMilli))
		}
	}
}

// TestPrefetchRetries fails prefetch requests for good (no client retries):
// the prefetcher backs off, tries again and completes.
func TestPrefetchRetries(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 63, 1200, 100)
	var n atomic.Int64
	reg.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+l.digest.String()) || r.Header.Get("Range") == "" {
			return false
		}
		// The first is the lookup's gzip header; the first prefetch batch
		// fails.
		if n.Add(1) == 2 {
			http.Error(w, "storage backend hiccup", http.StatusInternalServerError)
			return true
		}
		return false
	})
	s, img, _ := servedFromLocal(t, reg, l, func(c *config.Config) {
		c.Prefetch.Enabled = true
		c.Verify.Enabled = true
		c.Prefetch.Concurrency = 1
		c.Registry.MaxRetries = 0
	}, Options{})
	lv := s.mustLookup(t, img.ref, l.digest)
	ls := s.waitLayer(t, l.digest, 30*time.Second, "prefetched", prefetchDone)
	st, _ := s.status(t, l.digest)
	if ls.SpansCached != ls.Spans || st.Registry.Errors < 1 || n.Load() < 3 {
		t.Errorf("status %+v, registry errors %d, %d range GETs; want every span cached after a failed batch", ls, st.Registry.Errors, n.Load())
	}
	mark := reg.mark()
	checkAllFiles(t, lv, l, 1<<20)
	if got := reg.since(mark, anyBlobGet); len(got) != 0 {
		t.Errorf("blob GETs after prefetch = %d, want 0", len(got))
	}
}
