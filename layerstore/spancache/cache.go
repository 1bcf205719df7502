package spancache

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

var (
	// ErrNotFound is returned by Get for a span that is not cached.
	ErrNotFound = errors.New("spancache: span not cached")
	// ErrFull is returned by Put when the cap is reached and every cached
	// span belongs to a layer in use (nothing may be evicted); the caller
	// serves the span from memory without caching it.
	ErrFull = errors.New("spancache: cache full of spans in use")
)

// Key identifies a span: the layer's compressed digest and the span number.
type Key struct {
	Layer digest.Digest
	Span  int32
}

func (k Key) String() string { return fmt.Sprintf("%s/%d", k.Layer, k.Span) }

// touchInterval limits how often a read updates an entry's mtime on disk (the
// access time that orders eviction across restarts).
const touchInterval = time.Minute

// Stats are the cache's counters.
type Stats struct {
	Entries   int
	Bytes     int64
	MaxBytes  int64
	Hits      int64
	Misses    int64
	Evictions int64
	Rejected  int64 // Puts refused with ErrFull
}

// Cache is the on-disk span cache. Safe for concurrent use.
type Cache struct {
	dir string
	now func() time.Time

	mu sync.Mutex // guards the fields below
	// max is the cap in bytes (0 = no cap).
	max     int64
	size    int64
	entries map[Key]*list.Element // of *entry
	lru     *list.List            // least recently used at the back
	pins    map[digest.Digest]int
	stats   Stats
}

type entry struct {
	key     Key
	size    int64
	touched time.Time
}

// Open opens (creating it if needed) the cache in dir with a cap of maxBytes
// (0 = unbounded). Existing entries are indexed by their modification time;
// temporary files left by a killed daemon are removed.
func Open(dir string, maxBytes int64) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spancache: %w", err)
	}
	c := &Cache{dir: dir, now: time.Now, max: maxBytes, entries: make(map[Key]*list.Element), lru: list.New(), pins: make(map[digest.Digest]int)}
	var found []*entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		name := d.Name()
		if strings.HasPrefix(name, ".tmp-") {
			return os.Remove(p)
		}
		k, ok := c.keyOf(p)
		if !ok {
			return nil // not ours; leave it
		}
		info, err := d.Info()
		if err != nil {
			return nil // vanished meanwhile
		}
		found = append(found, &entry{key: k, size: info.Size(), touched: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("spancache: scan %s: %w", dir, err)
	}
	// Most recently used first: PushBack in descending time order.
	sortEntries(found)
	for _, e := range found {
		c.entries[e.key] = c.lru.PushBack(e)
		c.size += e.size
	}
	c.mu.Lock()
	c.evictLocked(0)
	c.mu.Unlock()
	return c, nil
}

func sortEntries(es []*entry) {
	slices.SortFunc(es, func(a, b *entry) int { return b.touched.Compare(a.touched) })
}

func (c *Cache) path(k Key) string {
	return filepath.Join(c.dir, k.Layer.Algorithm().String(), k.Layer.Encoded(), strconv.Itoa(int(k.Span)))
}

// keyOf parses a path made by path.
func (c *Cache) keyOf(p string) (Key, bool) {
	rel, err := filepath.Rel(c.dir, p)
	if err != nil {
		return Key{}, false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	if len(parts) != 3 {
		return Key{}, false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(parts[0]), parts[1])
	if d.Validate() != nil {
		return Key{}, false
	}
	n, err := strconv.ParseInt(parts[2], 10, 32)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != parts[2] {
		return Key{}, false
	}
	return Key{Layer: d, Span: int32(n)}, true
}

// SetMax changes the cap and evicts what exceeds it.
func (c *Cache) SetMax(maxBytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max = maxBytes
	c.evictLocked(0)
}

// Has reports whether k is cached (without counting an access).
func (c *Cache) Has(k Key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[k]
	return ok
}

// Get returns the cached bytes of k. The caller must verify them (span
// digest) and Remove the entry when they are wrong.
func (c *Cache) Get(k Key) ([]byte, error) {
	c.mu.Lock()
	el, ok := c.entries[k]
	if !ok {
		c.stats.Misses++
		c.mu.Unlock()
		return nil, ErrNotFound
	}
	e := el.Value.(*entry)
	c.lru.MoveToFront(el)
	now := c.now()
	touch := now.Sub(e.touched) > touchInterval
	if touch {
		e.touched = now
	}
	c.mu.Unlock()

	data, err := os.ReadFile(c.path(k))
	if err != nil {
		c.mu.Lock()
		c.stats.Misses++
		if el2, ok := c.entries[k]; ok && el2 == el {
			c.removeLocked(el)
		}
		c.mu.Unlock()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("spancache: read %s: %w", k, err)
	}
	if touch {
		_ = os.Chtimes(c.path(k), now, now) // best effort: orders eviction after a restart
	}
	c.mu.Lock()
	c.stats.Hits++
	c.mu.Unlock()
	return data, nil
}

// Put stores data as k atomically (temporary file, then rename). It evicts
// least recently used spans of layers not in use to stay under the cap, and
// returns ErrFull when that is not possible.
func (c *Cache) Put(k Key, data []byte) error {
	c.mu.Lock()
	if el, ok := c.entries[k]; ok {
		c.lru.MoveToFront(el)
		c.mu.Unlock()
		return nil
	}
	need := int64(len(data))
	if !c.makeRoomLocked(need) {
		c.stats.Rejected++
		c.mu.Unlock()
		return ErrFull
	}
	c.size += need // reserved until the entry is committed or abandoned
	c.mu.Unlock()
	committed := false
	defer func() {
		if !committed {
			c.mu.Lock()
			c.size -= need
			c.mu.Unlock()
		}
	}()

	p := c.path(k)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("spancache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-"+strconv.Itoa(int(k.Span))+"-")
	if err != nil {
		return fmt.Errorf("spancache: %w", err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("spancache: write %s: %w", k, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("spancache: commit %s: %w", k, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[k]; !ok {
		c.entries[k] = c.lru.PushFront(&entry{key: k, size: need, touched: c.now()})
		committed = true // the reservation becomes the entry's size
	}
	return nil
}

// makeRoomLocked evicts until need more bytes fit under the cap; it reports
// whether they do.
func (c *Cache) makeRoomLocked(need int64) bool {
	if c.max <= 0 {
		return true
	}
	if need > c.max {
		return false
	}
	c.evictLocked(need)
	return c.size+need <= c.max
}

// evictLocked removes least recently used entries of layers not in use until
// size+need fits under the cap (or nothing evictable is left).
func (c *Cache) evictLocked(need int64) {
	if c.max > 0 {
		c.evictDownToLocked(c.max - need)
	}
}

// evictDownToLocked removes least recently used entries of layers not in
// use until at most target bytes are cached (or nothing evictable is left).
func (c *Cache) evictDownToLocked(target int64) {
	for el := c.lru.Back(); el != nil && c.size > target; {
		prev := el.Prev()
		e := el.Value.(*entry)
		if c.pins[e.key.Layer] == 0 {
			c.removeLocked(el)
			os.Remove(c.path(e.key))
			c.stats.Evictions++
		}
		el = prev
	}
}

func (c *Cache) removeLocked(el *list.Element) {
	e := el.Value.(*entry)
	c.lru.Remove(el)
	delete(c.entries, e.key)
	c.size -= e.size
}

// Remove drops k (e.g. after it failed verification).
func (c *Cache) Remove(k Key) error {
	c.mu.Lock()
	if el, ok := c.entries[k]; ok {
		c.removeLocked(el)
	}
	c.mu.Unlock()
	if err := os.Remove(c.path(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spancache: remove %s: %w", k, err)
	}
	return nil
}

// RemoveLayer drops every span of layer.
func (c *Cache) RemoveLayer(layer digest.Digest) error {
	c.mu.Lock()
	for k, el := range c.entries {
		if k.Layer == layer {
			c.removeLocked(el)
		}
	}
	c.mu.Unlock()
	if err := os.RemoveAll(filepath.Dir(c.path(Key{Layer: layer}))); err != nil {
		return fmt.Errorf("spancache: remove layer %s: %w", layer, err)
	}
	return nil
}

// Pin marks layer as in use: its spans are not evicted until a matching
// Unpin.
func (c *Cache) Pin(layer digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pins[layer]++
}

// Unpin undoes one Pin.
func (c *Cache) Unpin(layer digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pins[layer] <= 1 {
		delete(c.pins, layer)
		return
	}
	c.pins[layer]--
}

// Prune evicts spans of layers not in use, least recently used first, until
// the cache holds at most target bytes. It returns the bytes freed.
func (c *Cache) Prune(target int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.size
	c.evictDownToLocked(target)
	return before - c.size
}

// LayerBytes returns the number of cached spans of layer and their size.
func (c *Cache) LayerBytes(layer digest.Digest) (spans int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, el := range c.entries {
		if k.Layer == layer {
			spans++
			bytes += el.Value.(*entry).size
		}
	}
	return spans, bytes
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries, s.Bytes, s.MaxBytes = len(c.entries), c.size, c.max
	return s
}
