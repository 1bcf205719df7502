package layerstore

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/lazypull/lazypull/layerstore/alsfs"
)

// lookupAll runs n lookups of (ref, d) released at the same instant and
// returns their results.
func lookupAll(t *testing.T, s *testStore, n int, ref string, d digest.Digest) ([]alsfs.Layer, []error) {
	t.Helper()
	start := make(chan struct{})
	layers := make([]alsfs.Layer, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			layers[i], errs[i] = s.Lookup(context.Background(), ref, d)
		}()
	}
	close(start)
	wg.Wait()
	return layers, errs
}

// TestConcurrentLookupsMerged sends 50 lookups of one layer at once: the
// image is resolved once, the zTOC fetched or built once, and every lookup
// gets the same layer.
func TestConcurrentLookupsMerged(t *testing.T) {
	tests := []struct {
		name     string
		registry bool // a SOCI v1 index in the registry; otherwise built on demand
	}{
		{"built on demand", false},
		{"zTOC from the registry", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTestRegistry(t)
			l := stdLayer(t, 10, 300, 200)
			img := reg.pushImage(t, "app/many", "v1", []*testLayer{l}, imageOptions{})
			z := buildZtoc(t, l, nil)
			if tc.registry {
				reg.pushSociV1(t, img, []*testZtoc{z})
			}
			s := newTestStore(t, reg, nil, Options{})
			mark := reg.mark()
			layers, errs := lookupAll(t, s, 50, img.ref, l.digest)
			for i, err := range errs {
				if err != nil {
					t.Fatalf("lookup %d: %v", i, err)
				}
				if layers[i].(*layerView).l != layers[0].(*layerView).l {
					t.Fatalf("lookup %d returned another layer object than lookup 0", i)
				}
			}
			count := func(keep func(reqRecord) bool) int { return len(reg.since(mark, keep)) }
			checks := []struct {
				what string
				got  int
				want int
			}{
				{"manifest GETs", count(func(r reqRecord) bool { return r.kind == "manifests" && r.target == "v1" }), 1},
				{"config GETs", count(blobGets(digest.FromBytes(img.config))), 1},
				{"referrers requests", count(func(r reqRecord) bool { return r.kind == "referrers" }), 1},
				{"whole-layer GETs", count(func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng == "" }), map[bool]int{false: 1, true: 0}[tc.registry]},
				{"zTOC GETs", count(blobGets(z.digest)), map[bool]int{false: 0, true: 1}[tc.registry]},
				{"layer range GETs (gzip header)", count(func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng != "" }), 1},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s = %d, want %d", c.what, c.got, c.want)
				}
			}
			checkAllFiles(t, layers[49], l, 1<<20)
		})
	}
}

// TestTwoImagesAtOnce looks up every layer of two images sharing a base
// layer, all at the same instant: each layer is indexed once and both
// images read back exactly.
func TestTwoImagesAtOnce(t *testing.T) {
	reg := newTestRegistry(t)
	base := stdLayer(t, 20, 300, 100)
	a := stdLayer(t, 21, 200, 100)
	b := stdLayer(t, 22, 200, 100)
	imgA := reg.pushImage(t, "team/a", "v1", []*testLayer{base, a}, imageOptions{})
	imgB := reg.pushImage(t, "team/b", "v1", []*testLayer{base, b}, imageOptions{})
	s := newTestStore(t, reg, nil, Options{})

	type job struct {
		img *testImage
		l   *testLayer
	}
	jobs := []job{{imgA, base}, {imgA, a}, {imgB, base}, {imgB, b}}
	const perJob = 8
	start := make(chan struct{})
	results := make([]alsfs.Layer, len(jobs)*perJob)
	errs := make([]error, len(results))
	var wg sync.WaitGroup
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			j := jobs[i%len(jobs)]
			<-start
			results[i], errs[i] = s.Lookup(context.Background(), j.img.ref, j.l.digest)
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("lookup %d (%s): %v", i, jobs[i%len(jobs)].img.ref, err)
		}
	}
	for _, l := range []*testLayer{base, a, b} {
		full := reg.since(0, func(r reqRecord) bool { return blobGets(l.digest)(r) && r.rng == "" })
		if len(full) != 1 {
			t.Errorf("layer %s indexed from %d whole-blob GETs, want 1", l.digest, len(full))
		}
	}
	var wgRead sync.WaitGroup
	for i, lv := range results[:len(jobs)] {
		wgRead.Add(1)
		go func() {
			defer wgRead.Done()
			checkAllFiles(t, lv, jobs[i].l, 48<<10)
		}()
	}
	wgRead.Wait()
	_, ls := s.status(t, base.digest)
	if ls == nil || len(ls.Refs) != 2 {
		t.Errorf("shared layer status %+v, want 2 refs", ls)
	}
}

// TestLookupWhileReading reads files of a layer from several goroutines
// while the same and another layer are looked up, used, released and the
// status read: reads stay exact and every span is fetched once.
func TestLookupWhileReading(t *testing.T) {
	reg := newTestRegistry(t)
	la := stdLayer(t, 30, 600, 200)
	lb := stdLayer(t, 31, 200, 100)
	img := reg.pushImage(t, "app/busy", "v1", []*testLayer{la, lb}, imageOptions{})
	za, zb := buildZtoc(t, la, nil), buildZtoc(t, lb, nil)
	cfg := testConfig(t.TempDir(), reg.host)
	putLocalZtoc(t, cfg.RootDir, za)
	putLocalZtoc(t, cfg.RootDir, zb)
	s := openStore(t, cfg, Options{})
	lv := s.mustLookup(t, img.ref, la.digest)
	mark := reg.mark()

	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := lv.Content()
			if err != nil {
				errc <- err
				return
			}
			for round := range 3 {
				for i, e := range c.Entries() {
					want, ok := la.content(e.Name)
					if !ok {
						continue
					}
					got, err := readFile(context.Background(), c, resolveLink(t, c, i), len(want), 8<<10*(g+1))
					if err != nil {
						errc <- fmt.Errorf("goroutine %d round %d: read %s: %w", g, round, e.Name, err)
						return
					}
					if string(got) != string(want) {
						errc <- fmt.Errorf("goroutine %d round %d: %s differs", g, round, e.Name)
						return
					}
				}
			}
		}()
	}
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := []digest.Digest{la.digest, lb.digest}[i%2]
			if _, err := s.Lookup(context.Background(), img.ref, d); err != nil {
				errc <- fmt.Errorf("lookup %d: %w", i, err)
				return
			}
			s.Use(img.ref, d)
			if _, err := s.Status(context.Background()); err != nil {
				errc <- err
			}
			s.Release(img.ref, d)
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	var rangeBytes int64
	for _, r := range reg.since(mark, blobGets(la.digest)) {
		if r.status != http.StatusPartialContent {
			t.Errorf("layer GET answered %d, want 206", r.status)
		}
		rangeBytes += r.bytes
	}
	// Adjacent spans may share a byte, fetched with each span.
	if limit := int64(len(la.blob)) + int64(za.openIndex(t).NumSpans()); rangeBytes > limit {
		t.Errorf("fetched %d bytes of a %d-byte layer, want every span fetched once (at most %d)", rangeBytes, len(la.blob), limit)
	}
	_, ls := s.status(t, la.digest)
	if ls == nil || ls.InUse != 0 {
		t.Errorf("layer status %+v, want in use 0 after as many Release as Use", ls)
	}
}
