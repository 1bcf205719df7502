package layerstore

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// corruptedSpans counts the span cache entries a served layer found corrupt.
func corruptedSpans(t testing.TB, s *testStore, d digest.Digest) int64 {
	t.Helper()
	l := s.anyLayer(d)
	if l == nil {
		t.Fatalf("layer %s not served", d)
	}
	return l.spans.Stats().BadCached
}

// TestReopenAfterAbandonedPrefetch abandons a store in the middle of a
// prefetch (Close at a random moment), leaves the debris of a killed daemon
// (a temporary file, a damaged span) and opens a second store on the same
// root: it serves exact bytes and cleans up.
func TestReopenAfterAbandonedPrefetch(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 80, 1500, 300)
	img := reg.pushImage(t, "app/crash", "v1", []*testLayer{l}, imageOptions{})
	z := buildZtoc(t, l, nil)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			cfg := testConfig(t.TempDir(), reg.host)
			cfg.Prefetch.Enabled = true
			cfg.Verify.Enabled = true
			cfg.Prefetch.Concurrency = 2
			cfg.Prefetch.Bandwidth = 1 << 20
			cfg.Prefetch.BatchSize = 1 << 20
			putLocalZtoc(t, cfg.RootDir, z)
			s1 := openStore(t, cfg, Options{})
			s1.mustLookup(t, img.ref, l.digest)
			wait := time.Duration(rng.IntN(1500)) * time.Millisecond
			time.Sleep(wait)
			s1.closeStore()
			cached := spanFiles(t, cfg.RootDir, l.digest)
			t.Logf("abandoned after %s with %d spans cached", wait, len(cached))

			// What a killed daemon leaves: a half-written temporary file and
			// a span file damaged on disk.
			dir := filepath.Join(cfg.RootDir, "spancache", spanGroup(l.digest, z.digest))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(dir, ".tmp-3-12345")
			if err := os.WriteFile(tmp, []byte("half a span"), 0o600); err != nil {
				t.Fatal(err)
			}
			damaged := ""
			if len(cached) > 0 {
				damaged = cached[rng.IntN(len(cached))]
				data, err := os.ReadFile(damaged)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(damaged, data[:len(data)/2], 0o600); err != nil {
					t.Fatal(err)
				}
			}

			cfg.Prefetch.Enabled = false
			s2 := openStore(t, cfg, Options{})
			if _, err := os.Stat(tmp); !os.IsNotExist(err) {
				t.Errorf("temporary span file left by a killed daemon still there (%v)", err)
			}
			lv := s2.mustLookup(t, img.ref, l.digest)
			checkAllFiles(t, lv, l, 1<<20)
			b, size := lv.Blob()
			all := make([]byte, size)
			if n, err := b.ReadAt(all, 0); n != int(size) || err != nil || string(all) != string(l.blob) {
				t.Fatalf("blob ReadAt after reopening = %d, %v, want the exact layer", n, err)
			}
			want := int64(0)
			if damaged != "" {
				want = 1
			}
			if got := corruptedSpans(t, s2, l.digest); got != want {
				t.Errorf("corrupt span cache entries found = %d, want %d", got, want)
			}
			checkSpanFiles(t, cfg.RootDir, z)
		})
	}
}

// checkSpanFiles verifies every cached span file of z's layer against the
// zTOC.
func checkSpanFiles(t *testing.T, root string, z *testZtoc) {
	t.Helper()
	x := z.openIndex(t)
	for _, p := range spanFiles(t, root, z.layer.digest) {
		id := spanID(t, p)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.VerifySpan(id, data); err != nil {
			t.Errorf("cached span %d: %v", id, err)
		}
	}
}

// TestCorruptSpanFile damages one cached span of a layer built on demand:
// the next read detects it, drops it and fetches exactly that span again.
func TestCorruptSpanFile(t *testing.T) {
	reg := newTestRegistry(t)
	l := stdLayer(t, 81, 500, 200)
	img := reg.pushImage(t, "app/corrupt", "v1", []*testLayer{l}, imageOptions{})
	cfg := testConfig(t.TempDir(), reg.host)
	s1 := openStore(t, cfg, Options{})
	s1.mustLookup(t, img.ref, l.digest)
	zd := mustZtocDigest(t, s1, l.digest)
	s1.closeStore()

	zdata, err := os.ReadFile(filepath.Join(cfg.RootDir, "artifacts", "cas", "sha256-"+zd.Encoded(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	z := &testZtoc{layer: l, data: zdata, digest: zd}
	x := z.openIndex(t)
	const victim = 4
	p := filepath.Join(cfg.RootDir, "spancache", spanGroup(l.digest, zd), "c"+strconv.Itoa(victim))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("span %d not cached after an on-demand build: %v", victim, err)
	}
	data[len(data)/2] ^= 1
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}

	s2 := openStore(t, cfg, Options{})
	lv := s2.mustLookup(t, img.ref, l.digest)
	mark := reg.mark()
	checkAllFiles(t, lv, l, 1<<20)
	gets := reg.since(mark, blobGets(l.digest))
	c0, c1 := x.SpanCompressedRange(victim)
	if want := fmt.Sprintf("bytes=%d-%d", c0, c1-1); len(gets) != 1 || gets[0].rng != want {
		t.Errorf("requests after damaging span %d: %+v, want one GET of %s", victim, gets, want)
	}
	if got := corruptedSpans(t, s2, l.digest); got != 1 {
		t.Errorf("corrupt span cache entries found = %d, want 1", got)
	}
	fixed, err := os.ReadFile(p)
	if err != nil || fmt.Sprintf("sha256:%x", sha256.Sum256(fixed)) != x.SpanDigest(victim).String() {
		t.Errorf("span %d after the refetch: %v, want the good span cached again", victim, err)
	}
	logged := false
	for _, e := range s2.logs.AllEntries() {
		logged = logged || strings.Contains(e.Message, "corrupt span")
	}
	if !logged {
		t.Error("the corrupt span cache entry was not logged")
	}
}
