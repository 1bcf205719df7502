package layerstore

import (
	"context"
	"math/rand/v2"
	"testing"
)

// BenchmarkCachedRead reads 4 KiB at random offsets of a file whose spans
// are all cached, through the layer's content as the FUSE tree calls it:
// the cost of a read that needs no fetch (header check lookup, span state,
// pread of the inflated span).
//
//	go test -run '^$' -bench CachedRead -benchmem ./layerstore/
func BenchmarkCachedRead(b *testing.B) {
	reg := newTestRegistry(b)
	l := stdLayer(b, 78, 8<<10, 64)
	s, img, _ := servedFromLocal(b, reg, l, nil, Options{})
	lv := s.mustLookup(b, img.ref, l.digest)
	c, _ := lv.Content()
	i := entryIndex(b, c, "data/random.bin")
	size := c.Entries()[i].UncompressedSize
	buf := make([]byte, 4096)
	for off := int64(0); off < size; off += int64(len(buf)) { // fetch and inflate everything
		if _, err := c.ReadFile(context.Background(), i, buf, off); err != nil && off+int64(len(buf)) < size {
			b.Fatal(err)
		}
	}
	s.settle(b)
	rng := rand.New(rand.NewPCG(3, 4))
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		off := rng.Int64N(size - int64(len(buf)))
		if _, err := c.ReadFile(context.Background(), i, buf, off); err != nil {
			b.Fatal(err)
		}
	}
}
