package diskcache

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

var (
	// ErrNotFound is returned for an entry that is not in the cache.
	ErrNotFound = errors.New("diskcache: not found")
	// ErrFull is returned by Commit when the entry does not fit under the
	// cap and every entry that could make room belongs to a pinned group.
	ErrFull = errors.New("diskcache: full of pinned entries")
	// ErrInvalidKey is returned for a key that is not a safe file name.
	ErrInvalidKey = errors.New("diskcache: invalid key")
)

// Key names an entry: the file <dir>/<Group>/<Name>. A group is the unit of
// pinning and of bulk removal (e.g. the spans of one layer). Both parts are
// non-empty, at most 200 bytes of [A-Za-z0-9._-], and do not start with a
// dot.
type Key struct {
	Group string
	Name  string
}

func (k Key) String() string { return k.Group + "/" + k.Name }

func validPart(s string) bool {
	if s == "" || len(s) > 200 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func (k Key) check() error {
	if !validPart(k.Group) || !validPart(k.Name) {
		return fmt.Errorf("%w: %q", ErrInvalidKey, k.String())
	}
	return nil
}

// tmpPrefix starts the names of files being written; Open removes those a
// killed process left behind.
const tmpPrefix = ".tmp-"

// touchInterval limits how often a read refreshes an entry's mtime on disk
// (the access time that orders eviction across restarts).
const touchInterval = time.Minute

// Stats are the cache's counters.
type Stats struct {
	Entries   int
	Bytes     int64
	MaxBytes  int64
	Hits      int64
	Misses    int64
	Evictions int64
	Rejected  int64 // commits refused with ErrFull
}

// Cache is an on-disk cache in one directory. Safe for concurrent use.
type Cache struct {
	dir string
	now func() time.Time

	mu sync.Mutex // guards the fields below
	// max is the cap in bytes (0 = no cap).
	max     int64
	size    int64
	entries map[Key]*list.Element // of *entry
	lru     *list.List            // least recently used at the back
	groups  map[string]*group
	stats   Stats
}

type entry struct {
	key     Key
	size    int64
	touched time.Time
}

// group is what the cache knows of a group: its entries' count and size,
// and its pins.
type group struct {
	entries int
	bytes   int64
	pins    int
}

// Open opens (creating it, mode 0700, if needed) the cache in dir with a cap
// of maxBytes (0 = unbounded). Existing entries are indexed with their
// modification time as last use; temporary files left by a killed process
// are removed; what exceeds the cap is evicted.
func Open(dir string, maxBytes int64) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("diskcache: %w", err)
	}
	c := &Cache{dir: dir, now: time.Now, max: maxBytes, entries: make(map[Key]*list.Element), lru: list.New(), groups: make(map[string]*group)}
	var found []*entry
	groups, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("diskcache: %w", err)
	}
	for _, g := range groups {
		if strings.HasPrefix(g.Name(), tmpPrefix) {
			os.RemoveAll(filepath.Join(dir, g.Name()))
			continue
		}
		if !g.IsDir() || !validPart(g.Name()) {
			continue // not ours; leave it
		}
		files, err := os.ReadDir(filepath.Join(dir, g.Name()))
		if err != nil {
			return nil, fmt.Errorf("diskcache: scan %s: %w", dir, err)
		}
		for _, f := range files {
			p := filepath.Join(dir, g.Name(), f.Name())
			if strings.HasPrefix(f.Name(), tmpPrefix) {
				os.Remove(p)
				continue
			}
			k := Key{Group: g.Name(), Name: f.Name()}
			if k.check() != nil || !f.Type().IsRegular() {
				continue
			}
			info, err := f.Info()
			if err != nil {
				continue // vanished meanwhile
			}
			found = append(found, &entry{key: k, size: info.Size(), touched: info.ModTime()})
		}
	}
	// Most recently used first: PushBack in descending time order.
	slices.SortFunc(found, func(a, b *entry) int { return b.touched.Compare(a.touched) })
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range found {
		c.addLocked(e, false)
	}
	if c.max > 0 {
		c.evictDownToLocked(c.max)
	}
	return c, nil
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

func (c *Cache) path(k Key) string { return filepath.Join(c.dir, k.Group, k.Name) }

func (c *Cache) groupLocked(name string) *group {
	g := c.groups[name]
	if g == nil {
		g = &group{}
		c.groups[name] = g
	}
	return g
}

// dropGroupLocked forgets a group with no entries and no pins.
func (c *Cache) dropGroupLocked(name string) {
	if g := c.groups[name]; g != nil && g.entries == 0 && g.pins == 0 {
		delete(c.groups, name)
	}
}

func (c *Cache) addLocked(e *entry, front bool) {
	if front {
		c.entries[e.key] = c.lru.PushFront(e)
	} else {
		c.entries[e.key] = c.lru.PushBack(e)
	}
	c.size += e.size
	g := c.groupLocked(e.key.Group)
	g.entries++
	g.bytes += e.size
}

func (c *Cache) removeLocked(el *list.Element) {
	e := el.Value.(*entry)
	c.lru.Remove(el)
	delete(c.entries, e.key)
	c.size -= e.size
	if g := c.groups[e.key.Group]; g != nil {
		g.entries--
		g.bytes -= e.size
		c.dropGroupLocked(e.key.Group)
	}
}

// SetMax changes the cap and evicts what exceeds it.
func (c *Cache) SetMax(maxBytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.max = maxBytes
	if c.max > 0 {
		c.evictDownToLocked(c.max)
	}
}

// Max returns the cap in bytes (0 = none).
func (c *Cache) Max() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.max
}

// Has reports whether k is cached, without counting an access.
func (c *Cache) Has(k Key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[k]
	return ok
}

// access marks k used and returns its path, or reports a miss.
func (c *Cache) access(k Key) (string, bool) {
	c.mu.Lock()
	el, ok := c.entries[k]
	if !ok {
		c.stats.Misses++
		c.mu.Unlock()
		return "", false
	}
	e := el.Value.(*entry)
	c.lru.MoveToFront(el)
	c.stats.Hits++
	now := c.now()
	touch := now.Sub(e.touched) > touchInterval
	if touch {
		e.touched = now
	}
	c.mu.Unlock()
	p := c.path(k)
	if touch {
		_ = os.Chtimes(p, now, now) // best effort: orders eviction after a restart
	}
	return p, true
}

// gone forgets k after its file turned out to be missing (removed from
// outside the cache).
func (c *Cache) gone(k Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.removeLocked(el)
	}
}

// Open opens entry k for reading at random offsets; the caller closes the
// file. The entry may be evicted meanwhile: an open file stays readable.
func (c *Cache) Open(k Key) (*os.File, int64, error) {
	if err := k.check(); err != nil {
		return nil, 0, err
	}
	p, ok := c.access(k)
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", k, ErrNotFound)
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			c.gone(k)
			return nil, 0, fmt.Errorf("%s: %w", k, ErrNotFound)
		}
		return nil, 0, fmt.Errorf("diskcache: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("diskcache: %w", err)
	}
	return f, st.Size(), nil
}

// ReadFile returns the content of entry k.
func (c *Cache) ReadFile(k Key) ([]byte, error) {
	f, _, err := c.Open(k)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("diskcache: read %s: %w", k, err)
	}
	return data, nil
}

// Writer writes one entry. Nothing is visible until Commit; Abort (or a
// crash) leaves nothing behind.
type Writer struct {
	c    *Cache
	k    Key
	f    *os.File
	n    int64
	done bool
}

// Create starts writing entry k (which may exist: Commit replaces it).
func (c *Cache) Create(k Key) (*Writer, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	dir := filepath.Join(c.dir, k.Group)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("diskcache: %w", err)
	}
	f, err := os.CreateTemp(dir, tmpPrefix+k.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("diskcache: %w", err)
	}
	return &Writer{c: c, k: k, f: f}, nil
}

// Write appends p to the entry.
func (w *Writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, fmt.Errorf("diskcache: write %s after commit or abort", w.k)
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	if err != nil {
		err = fmt.Errorf("diskcache: write %s: %w", w.k, err)
	}
	return n, err
}

// Abort discards what was written.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.f.Close()
	os.Remove(w.f.Name())
}

// Commit makes the entry durable (fsync) and visible (rename), evicting
// least recently used entries of unpinned groups to stay under the cap. It
// returns ErrFull, and discards the entry, when it does not fit.
func (w *Writer) Commit() error {
	if w.done {
		return fmt.Errorf("diskcache: commit %s twice or after abort", w.k)
	}
	c := w.c
	// Room first, so a full cache costs no fsync; the reservation becomes
	// the entry's size.
	c.mu.Lock()
	if !c.makeRoomLocked(w.n) {
		c.stats.Rejected++
		c.mu.Unlock()
		w.Abort()
		return fmt.Errorf("%s: %w", w.k, ErrFull)
	}
	c.size += w.n
	c.mu.Unlock()
	release := func() {
		c.mu.Lock()
		c.size -= w.n
		c.mu.Unlock()
	}
	serr := w.f.Sync()
	cerr := w.f.Close()
	w.done = true
	if err := errors.Join(serr, cerr); err != nil {
		os.Remove(w.f.Name())
		release()
		return fmt.Errorf("diskcache: write %s: %w", w.k, err)
	}
	if err := os.Rename(w.f.Name(), c.path(w.k)); err != nil {
		os.Remove(w.f.Name())
		release()
		return fmt.Errorf("diskcache: commit %s: %w", w.k, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.size -= w.n // the entry counts itself below
	if el, ok := c.entries[w.k]; ok {
		c.removeLocked(el) // replaced
	}
	c.addLocked(&entry{key: w.k, size: w.n, touched: c.now()}, true)
	return nil
}

// Put stores data as entry k (Create, Write, Commit).
func (c *Cache) Put(k Key, data []byte) error {
	w, err := c.Create(k)
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		w.Abort()
		return err
	}
	return w.Commit()
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
	c.evictDownToLocked(c.max - need)
	return c.size+need <= c.max
}

// evictDownToLocked removes least recently used entries of unpinned groups
// until at most target bytes are cached (or nothing evictable is left).
func (c *Cache) evictDownToLocked(target int64) {
	for el := c.lru.Back(); el != nil && c.size > target; {
		prev := el.Prev()
		e := el.Value.(*entry)
		if g := c.groups[e.key.Group]; g == nil || g.pins == 0 {
			c.removeLocked(el)
			os.Remove(c.path(e.key))
			c.stats.Evictions++
		}
		el = prev
	}
}

// Remove drops entry k.
func (c *Cache) Remove(k Key) error {
	if err := k.check(); err != nil {
		return err
	}
	c.gone(k)
	if err := os.Remove(c.path(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("diskcache: remove %s: %w", k, err)
	}
	return nil
}

// RemoveGroup drops every entry of group g (pinned or not).
func (c *Cache) RemoveGroup(g string) error {
	if !validPart(g) {
		return fmt.Errorf("%w: group %q", ErrInvalidKey, g)
	}
	c.mu.Lock()
	if grp := c.groups[g]; grp != nil && grp.entries > 0 {
		for el := c.lru.Front(); el != nil; {
			next := el.Next()
			if el.Value.(*entry).key.Group == g {
				c.removeLocked(el)
			}
			el = next
		}
	}
	c.mu.Unlock()
	if err := os.RemoveAll(filepath.Join(c.dir, g)); err != nil {
		return fmt.Errorf("diskcache: remove group %s: %w", g, err)
	}
	return nil
}

// Pin keeps the entries of group g from eviction until a matching Unpin.
func (c *Cache) Pin(g string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.groupLocked(g).pins++
}

// Unpin undoes one Pin.
func (c *Cache) Unpin(g string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if grp := c.groups[g]; grp != nil && grp.pins > 0 {
		grp.pins--
		c.dropGroupLocked(g)
	}
}

// Pinned reports whether group g is pinned.
func (c *Cache) Pinned(g string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	grp := c.groups[g]
	return grp != nil && grp.pins > 0
}

// Prune evicts entries of unpinned groups, least recently used first, until
// at most target bytes are cached. It returns the bytes freed.
func (c *Cache) Prune(target int64) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.size
	c.evictDownToLocked(target)
	return before - c.size
}

// GroupUsage returns the number and total size of group g's entries.
func (c *Cache) GroupUsage(g string) (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if grp := c.groups[g]; grp != nil {
		return grp.entries, grp.bytes
	}
	return 0, 0
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries, s.Bytes, s.MaxBytes = len(c.entries), c.size, c.max
	return s
}

// RenameGroup moves every entry of group from to group to (which is
// removed first if it has entries), e.g. spans cached while their layout
// was being built under a temporary name. Pins stay with the names.
func (c *Cache) RenameGroup(from, to string) error {
	if !validPart(from) || !validPart(to) {
		return fmt.Errorf("%w: group %q or %q", ErrInvalidKey, from, to)
	}
	if from == to {
		return nil
	}
	if err := c.RemoveGroup(to); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := os.Rename(filepath.Join(c.dir, from), filepath.Join(c.dir, to)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // nothing cached under from
		}
		return fmt.Errorf("diskcache: rename group %s: %w", from, err)
	}
	var moved []*entry
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*entry); e.key.Group == from {
			c.removeLocked(el)
			moved = append(moved, e)
		}
		el = next
	}
	for i := len(moved) - 1; i >= 0; i-- { // keep their order, most recent first
		e := moved[i]
		e.key.Group = to
		c.addLocked(e, true)
	}
	return nil
}
