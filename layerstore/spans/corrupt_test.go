package spans

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"
)

// lateLayout checks nothing but lengths in Verify and the digest in
// Inflate, as the TOC formats do (their digests cover uncompressed data).
type lateLayout struct{ *testLayout }

func (l lateLayout) Verify(id int, c []byte) error {
	c0, c1 := l.CompressedRange(id)
	if int64(len(c)) != c1-c0 {
		return fmt.Errorf("span %d: %d bytes", id, len(c))
	}
	return nil
}

func (l lateLayout) Inflate(id int, c, dst []byte) ([]byte, error) {
	if sha256.Sum256(c) != l.digests[id] {
		return nil, fmt.Errorf("span %d: %w", id, ErrSpanCorrupt)
	}
	return l.testLayout.Inflate(id, c, dst)
}

func TestInflateCorruptFetchedAgainThenBad(t *testing.T) {
	var f *fixture
	f = newFixture(t, 4, 4096, 0, func(o *Options) {
		o.ReadAheadBytes = -1
		o.Layout = lateLayout{o.Layout.(*testLayout)}
	})
	want := f.layout.plain()
	// One bad answer passes Verify, fails Inflate: fetched again, served.
	f.src.corrupt.Store(1)
	buf := make([]byte, 100)
	if _, err := f.m.ReadAt(context.Background(), buf, 10); err != nil || !bytes.Equal(buf, want[10:110]) {
		t.Fatalf("ReadAt after one corrupt answer = %v (exact: %v)", err, bytes.Equal(buf, want[10:110]))
	}
	if f.m.Bad() != "" || f.m.Stats().Corrupt != 1 || f.src.requests.Load() != 2 {
		t.Fatalf("after one corrupt answer: bad %q, %+v, %d requests; want good, 1 corrupt, 2 requests", f.m.Bad(), f.m.Stats(), f.src.requests.Load())
	}
	// The good bytes replaced the bad ones on disk: once the inflated copy
	// is gone, the span inflates from the cache without a fetch.
	waitFor(t, "span committed", func() bool { return f.m.Idle() })
	if err := f.cache.Remove(f.m.uncKey(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.ReadAt(context.Background(), buf, 10); err != nil || !bytes.Equal(buf, want[10:110]) {
		t.Fatalf("ReadAt from the cached span = %v", err)
	}
	if got := f.src.requests.Load(); got != 2 {
		t.Errorf("%d requests after reading the cached span, want still 2", got)
	}
	// Two bad answers in a row: the layer is bad, nothing is served.
	f.src.corrupt.Store(2)
	if n, err := f.m.ReadAt(context.Background(), buf, 2*4096); !errors.Is(err, ErrLayerBad) || n != 0 {
		t.Fatalf("ReadAt after two corrupt answers = %d, %v; want 0, ErrLayerBad", n, err)
	}
	select {
	case <-f.bad:
	case <-time.After(5 * time.Second):
		t.Fatal("OnBad not called")
	}
}

func TestSeedSavesAFetch(t *testing.T) {
	f := newFixture(t, 4, 4096, 0, func(o *Options) { o.ReadAheadBytes = -1 })
	c0, c1 := f.layout.CompressedRange(3)
	bad := bytes.Clone(f.layout.blob[c0:c1])
	bad[0] ^= 1
	if err := f.m.Seed(3, bad); err == nil {
		t.Fatal("Seed of bytes that fail Verify succeeded")
	}
	if err := f.m.Seed(3, f.layout.blob[c0:c1]); err != nil {
		t.Fatalf("Seed = %v", err)
	}
	if !f.m.Present(3) {
		t.Fatal("seeded span not present")
	}
	buf := make([]byte, c1-c0)
	if _, err := f.m.ReadAt(context.Background(), buf, c0); err != nil || !bytes.Equal(buf, f.layout.plain()[c0:c1]) {
		t.Fatalf("ReadAt of the seeded span = %v", err)
	}
	if got := f.src.requests.Load(); got != 0 {
		t.Errorf("%d requests for a seeded span, want 0", got)
	}
}
