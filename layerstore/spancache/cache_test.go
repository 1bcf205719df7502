package spancache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

var (
	layerA = digest.FromString("layer a")
	layerB = digest.FromString("layer b")
)

func span(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func TestPutGetRemove(t *testing.T) {
	c, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	k := Key{layerA, 3}
	if _, err := c.Get(k); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(empty) = %v, want ErrNotFound", err)
	}
	if err := c.Put(k, span(100, 'x')); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(k)
	if err != nil || !bytes.Equal(got, span(100, 'x')) {
		t.Fatalf("Get = %q, %v", got, err)
	}
	if err := c.Remove(k); err != nil {
		t.Fatal(err)
	}
	if c.Has(k) {
		t.Error("Has after Remove = true")
	}
	if s := c.Stats(); s.Hits != 1 || s.Misses != 1 || s.Entries != 0 || s.Bytes != 0 {
		t.Errorf("Stats = %+v, want 1 hit, 1 miss, empty", s)
	}
}

func TestReopenKeepsEntriesAndDropsTemporaries(t *testing.T) {
	dir := t.TempDir()
	c, _ := Open(dir, 0)
	for i := int32(0); i < 5; i++ {
		if err := c.Put(Key{layerA, i}, span(10+int(i), byte('a'+i))); err != nil {
			t.Fatal(err)
		}
	}
	// A write interrupted by kill -9 leaves a temporary file behind.
	tmp := filepath.Join(filepath.Dir(c.path(Key{layerA, 0})), ".tmp-7-123")
	if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	c2, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if s := c2.Stats(); s.Entries != 5 || s.Bytes != 10+11+12+13+14 {
		t.Errorf("reopened Stats = %+v, want 5 entries of 60 bytes", s)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("temporary file survived Open: %v", err)
	}
	got, err := c2.Get(Key{layerA, 4})
	if err != nil || !bytes.Equal(got, span(14, 'e')) {
		t.Errorf("Get after reopen = %q, %v", got, err)
	}
}

func TestEvictionLRUAndPins(t *testing.T) {
	c, _ := Open(t.TempDir(), 300)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	for i := int32(0); i < 3; i++ {
		if err := c.Put(Key{layerA, i}, span(100, 'a')); err != nil {
			t.Fatal(err)
		}
	}
	// Touch span 0 so span 1 is the least recently used.
	if _, err := c.Get(Key{layerA, 0}); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(Key{layerB, 0}, span(100, 'b')); err != nil {
		t.Fatal(err)
	}
	if c.Has(Key{layerA, 1}) {
		t.Error("least recently used span 1 not evicted")
	}
	for _, k := range []Key{{layerA, 0}, {layerA, 2}, {layerB, 0}} {
		if !c.Has(k) {
			t.Errorf("%v evicted, want kept", k)
		}
	}
	if s := c.Stats(); s.Bytes > 300 || s.Evictions != 1 {
		t.Errorf("Stats = %+v, want <= 300 bytes, 1 eviction", s)
	}

	// Pinned layers are never evicted; when only pinned spans are left, Put
	// refuses instead of breaking the cap.
	c.Pin(layerA)
	c.Pin(layerB)
	if err := c.Put(Key{layerB, 1}, span(100, 'c')); !errors.Is(err, ErrFull) {
		t.Errorf("Put into a cache full of pinned spans = %v, want ErrFull", err)
	}
	c.Unpin(layerB)
	if err := c.Put(Key{layerA, 9}, span(100, 'd')); err != nil {
		t.Errorf("Put after Unpin(B) = %v", err)
	}
	if c.Has(Key{layerB, 0}) || !c.Has(Key{layerA, 0}) || !c.Has(Key{layerA, 2}) {
		t.Error("eviction took a pinned span or kept the unpinned one")
	}
	if s := c.Stats(); s.Bytes > 300 || s.Rejected != 1 {
		t.Errorf("Stats = %+v, want <= 300 bytes and 1 rejected put", s)
	}
}

func TestPruneAndRemoveLayer(t *testing.T) {
	c, _ := Open(t.TempDir(), 0)
	for i := int32(0); i < 4; i++ {
		c.Put(Key{layerA, i}, span(50, 'a'))
		c.Put(Key{layerB, i}, span(50, 'b'))
	}
	c.Pin(layerB)
	if freed := c.Prune(0); freed != 200 {
		t.Errorf("Prune(0) freed %d, want 200 (all of the unpinned layer)", freed)
	}
	if n, b := c.LayerBytes(layerB); n != 4 || b != 200 {
		t.Errorf("pinned layer has %d spans/%d bytes after prune, want 4/200", n, b)
	}
	if err := c.RemoveLayer(layerB); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Entries != 0 {
		t.Errorf("entries after RemoveLayer = %d, want 0", s.Entries)
	}
}

func TestConcurrentPutGet(t *testing.T) {
	c, _ := Open(t.TempDir(), 20*64)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				k := Key{layerA, int32(i % 40)}
				want := span(64, byte(i%40))
				if err := c.Put(k, want); err != nil && !errors.Is(err, ErrFull) {
					t.Error(err)
					return
				}
				if got, err := c.Get(k); err == nil && !bytes.Equal(got, want) {
					t.Errorf("Get(%v) returned another span's bytes", k)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	if s := c.Stats(); s.Bytes > 20*64 {
		t.Errorf("cache holds %d bytes, cap %d", s.Bytes, 20*64)
	}
}
