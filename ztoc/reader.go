package ztoc

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// SpanCache keeps inflated spans in memory, bounded in bytes, least recently
// used first out, shared by every Reader given to it (one per daemon). It
// also merges concurrent inflations of the same span. The zero value is not
// usable; use NewSpanCache.
type SpanCache struct {
	max int64

	mu sync.Mutex // guards the fields below
	// size is the sum of the lengths of the cached spans.
	size    int64
	lru     *list.List // of *cachedSpan, most recent at the front
	entries map[spanKey]*list.Element
	flights map[spanKey]*flight

	hits, misses int64
}

type spanKey struct {
	x  *LayerIndex
	id SpanID
}

type cachedSpan struct {
	key  spanKey
	data []byte
}

type flight struct {
	done chan struct{}
	data []byte
	err  error
}

// NewSpanCache returns a cache holding at most maxBytes of inflated spans
// (at least one span is always kept while it is being read).
func NewSpanCache(maxBytes int64) *SpanCache {
	return &SpanCache{max: maxBytes, lru: list.New(), entries: make(map[spanKey]*list.Element), flights: make(map[spanKey]*flight)}
}

// Stats returns the number of lookups answered from memory and not.
func (c *SpanCache) Stats() (hits, misses int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
}

// Drop removes every span of x (e.g. when its layer goes away or was found
// bad).
func (c *SpanCache) Drop(x *LayerIndex) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, el := range c.entries {
		if k.x == x {
			c.lru.Remove(el)
			delete(c.entries, k)
			c.size -= int64(len(el.Value.(*cachedSpan).data))
		}
	}
}

// get returns a cached span, or the flight to wait for, or registers a new
// flight owned by the caller (own == true).
func (c *SpanCache) get(k spanKey) (data []byte, f *flight, own bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.lru.MoveToFront(el)
		c.hits++
		return el.Value.(*cachedSpan).data, nil, false
	}
	c.misses++
	if f, ok := c.flights[k]; ok {
		return nil, f, false
	}
	f = &flight{done: make(chan struct{})}
	c.flights[k] = f
	return nil, f, true
}

// land completes a flight owned by the caller and caches its data.
func (c *SpanCache) land(k spanKey, f *flight, data []byte, err error) {
	c.mu.Lock()
	delete(c.flights, k)
	if err == nil {
		if _, ok := c.entries[k]; !ok {
			c.entries[k] = c.lru.PushFront(&cachedSpan{key: k, data: data})
			c.size += int64(len(data))
			for c.size > c.max && c.lru.Len() > 1 {
				el := c.lru.Back()
				cs := el.Value.(*cachedSpan)
				c.lru.Remove(el)
				delete(c.entries, cs.key)
				c.size -= int64(len(cs.data))
			}
		}
	}
	c.mu.Unlock()
	f.data, f.err = data, err
	close(f.done)
}

// Reader reads the uncompressed tar stream of a layer, and files in it, at
// random offsets, fetching only the spans that hold the bytes asked for.
type Reader struct {
	x      *LayerIndex
	src    SpanSource
	cache  *SpanCache
	checks *HeaderChecks
}

// NewReader returns a Reader of x's layer getting compressed spans from src.
// cache may be shared between Readers; nil gives the Reader a small cache of
// its own (four spans).
func NewReader(x *LayerIndex, src SpanSource, cache *SpanCache) *Reader {
	if cache == nil {
		cache = NewSpanCache(4 * maxSpanLen(x))
	}
	return &Reader{x: x, src: src, cache: cache, checks: NewHeaderChecks(len(x.Entries()))}
}

func maxSpanLen(x *LayerIndex) int64 {
	var m int64
	for i := 0; i < x.NumSpans(); i++ {
		s, e := x.SpanUncompressedRange(SpanID(i))
		m = max(m, e-s)
	}
	return m
}

// Index returns the layer index the Reader serves.
func (r *Reader) Index() *LayerIndex { return r.x }

// ReadAt reads len(p) bytes of the uncompressed tar stream at off. It
// returns io.EOF with a short count at the end of the stream.
func (r *Reader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	size := r.x.z.UncompressedArchiveSize
	if off < 0 {
		return 0, fmt.Errorf("ztoc: negative offset %d", off)
	}
	if off >= size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), size)
	first, last := r.x.SpanOf(off), r.x.SpanOf(end-1)
	spans, err := r.spans(ctx, first, last)
	if err != nil {
		return 0, err
	}
	n := 0
	for i, data := range spans {
		u0, _ := r.x.SpanUncompressedRange(first + SpanID(i))
		lo := max(off-u0, 0)
		hi := min(end-u0, int64(len(data)))
		if lo < hi {
			n += copy(p[n:], data[lo:hi])
		}
	}
	if int64(n) != end-off {
		return n, fmt.Errorf("%w: spans %d-%d gave %d bytes at %d, want %d", ErrMalformed, first, last, n, off, end-off)
	}
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// errAbandoned completes the flights of spans whose inflation panicked.
var errAbandoned = fmt.Errorf("ztoc: inflating the span panicked: %w", ErrMalformed)

// spans returns the inflated spans first..last, from the cache or by
// fetching every run of missing spans with one FetchSpans call. Every
// flight it opens is completed before it returns, even when fetching or
// inflating fails or panics, so that no other reader of those spans waits
// forever.
func (r *Reader) spans(ctx context.Context, first, last SpanID) ([][]byte, error) {
	for attempt := 0; ; attempt++ {
		out, retry, err := r.spansOnce(ctx, first, last)
		if !retry || attempt >= 2 {
			return out, err
		}
	}
}

// spansOnce is one round of spans; retry reports that a span another
// reader was fetching failed only because that reader gave up (its
// context ended) while ours is still alive.
func (r *Reader) spansOnce(ctx context.Context, first, last SpanID) (out [][]byte, retry bool, err error) {
	out = make([][]byte, last-first+1)
	waits := make(map[SpanID]*flight)
	owned := make(map[SpanID]*flight)
	for id := first; id <= last; id++ {
		data, f, own := r.cache.get(spanKey{r.x, id})
		switch {
		case data != nil:
			out[id-first] = data
		case own:
			owned[id] = f
		default:
			waits[id] = f
		}
	}
	defer func() {
		// Land whatever is still in flight (a panic below, or a run not
		// reached), then let a panic go on.
		if len(owned) == 0 {
			return
		}
		p := recover()
		for id, f := range owned {
			r.cache.land(spanKey{r.x, id}, f, nil, errAbandoned)
		}
		if p != nil {
			panic(p)
		}
	}()
	// Fetch and inflate our own spans, one source call per contiguous run.
	var firstErr error
	for id := first; id <= last; {
		if _, ok := owned[id]; !ok {
			id++
			continue
		}
		runEnd := id
		for runEnd+1 <= last && owned[runEnd+1] != nil {
			runEnd++
		}
		err := r.fetchRun(ctx, id, runEnd, owned, out[id-first:])
		if err != nil && firstErr == nil {
			firstErr = err
		}
		id = runEnd + 1
	}
	for id, f := range waits {
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
		if f.err != nil {
			if isContextErr(f.err) && ctx.Err() == nil {
				retry = true
			}
			if firstErr == nil {
				firstErr = f.err
			}
			continue
		}
		out[id-first] = f.data
	}
	if firstErr != nil {
		return nil, retry, firstErr
	}
	return out, false, nil
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// fetchRun fetches and inflates the owned spans a..b and lands their
// flights (removing them from owned). The window of every span whose
// predecessor is in the run is checked against that predecessor's bytes
// (CheckWindow) before either is cached.
func (r *Reader) fetchRun(ctx context.Context, a, b SpanID, owned map[SpanID]*flight, out [][]byte) error {
	comp, err := r.src.FetchSpans(ctx, a, b)
	if err == nil && len(comp) != int(b-a+1) {
		err = fmt.Errorf("ztoc: span source returned %d spans for %d-%d", len(comp), a, b)
	}
	verified := false
	if vs, ok := r.src.(VerifyingSource); ok {
		verified = vs.VerifiesSpans()
	}
	errs := make([]error, b-a+1)
	for id := a; id <= b; id++ {
		k := id - a
		switch {
		case err == nil && verified:
			out[k], errs[k] = r.x.inflateVerified(id, comp[k], nil)
		case err == nil:
			out[k], errs[k] = r.x.InflateSpan(id, comp[k], nil)
		default:
			errs[k] = fmt.Errorf("ztoc: fetch spans %d-%d: %w", a, b, err)
		}
	}
	for id := b; id > a; id-- {
		k := id - a
		if errs[k] == nil && errs[k-1] == nil {
			if werr := r.x.CheckWindow(id, out[k-1]); werr != nil {
				errs[k], out[k] = werr, nil
			}
		}
	}
	var runErr error
	for id := a; id <= b; id++ {
		k := id - a
		f := owned[id]
		delete(owned, id)
		r.cache.land(spanKey{r.x, id}, f, out[k], errs[k])
		if errs[k] != nil && runErr == nil {
			runErr = errs[k]
		}
	}
	return runErr
}

// ReadFile reads entry i of the file table (a regular file or a hard link to
// one) at off. It returns io.EOF with a short count at the end of the file.
func (r *Reader) ReadFile(ctx context.Context, i int, p []byte, off int64) (int, error) {
	j, err := r.x.Resolve(i)
	if err != nil {
		return 0, err
	}
	m := &r.x.z.TOC.FileMetadata[j]
	if off < 0 {
		return 0, fmt.Errorf("ztoc: negative offset %d", off)
	}
	if off >= m.UncompressedSize {
		return 0, io.EOF
	}
	want := min(int64(len(p)), m.UncompressedSize-off)
	n, err := r.ReadAt(ctx, p[:want], m.UncompressedOffset+off)
	if err == io.EOF && int64(n) == want {
		err = nil
	}
	if err == nil && want < int64(len(p)) {
		err = io.EOF
	}
	return n, err
}

// Open returns the regular file (or the file a hard link points to) named
// name.
func (r *Reader) Open(name string) (*File, error) {
	i, ok := r.x.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("ztoc: open %q: %w", name, ErrNotExist)
	}
	j, err := r.x.Resolve(i)
	if err != nil {
		return nil, fmt.Errorf("ztoc: open %q: %w", name, err)
	}
	return &File{r: r, i: j}, nil
}

// File is a regular file of a layer, readable at random offsets.
type File struct {
	r *Reader
	i int
}

// Metadata returns the file's zTOC entry.
func (f *File) Metadata() *FileMetadata { return &f.r.x.z.TOC.FileMetadata[f.i] }

// Size returns the file's length.
func (f *File) Size() int64 { return f.Metadata().UncompressedSize }

// ReadAt implements io.ReaderAt.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	return f.r.ReadFile(context.Background(), f.i, p, off)
}

// ReadAtContext is ReadAt with a context for the fetches it causes.
func (f *File) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	return f.r.ReadFile(ctx, f.i, p, off)
}

// CheckHeader checks, before the first byte of entry i (a regular file or
// a hard link to one) is served, every tar header that byte relies on: the
// header run of the regular file holding the data and, for a hard link,
// the hard link's own header run (see CheckEntry). The caller's read that
// follows (n bytes at off in the file) is fetched together with the
// target's header when its spans follow the header's, so the check costs no
// extra request. Results are remembered: checking an entry again costs
// nothing.
func (r *Reader) CheckHeader(ctx context.Context, i int, off, n int64) error {
	j, err := r.x.Resolve(i)
	if err != nil {
		return err
	}
	if j != i {
		if err := r.CheckEntry(ctx, i); err != nil {
			return err
		}
	}
	m := &r.x.z.TOC.FileMetadata[j]
	if checked, err := r.checks.Result(j); checked {
		return err
	}
	hs, he := r.x.HeaderRange(j)
	a, c := r.x.SpanOf(hs), r.x.SpanOf(max(he-1, hs))
	if off >= 0 && off < m.UncompressedSize && n > 0 {
		// Fetch the read's spans in the same request when they follow.
		b, end := r.x.SpanOf(m.UncompressedOffset+off), r.x.SpanOf(m.UncompressedOffset+min(off+n, m.UncompressedSize)-1)
		if b-c <= 1 {
			c = max(c, end)
		}
	}
	if err := r.checkSpans(ctx, a, c); err != nil {
		return fmt.Errorf("ztoc: read header of %.200q: %w", m.Name, err)
	}
	_, err = r.checks.Result(j)
	return err
}

// CheckEntry checks entry i, of any type, against its own tar header run
// (see LayerIndex.CheckHeaderRun): for directories, symlinks, devices,
// FIFOs and hard links too, whose metadata a file system serves from the
// zTOC. It fetches the one or two spans that hold the header run and
// checks every other entry whose header run they hold as well, so that a
// directory listing costs a fetch per span, not per entry. Results are
// remembered.
func (r *Reader) CheckEntry(ctx context.Context, i int) error {
	if i < 0 || i >= len(r.x.Entries()) {
		return fmt.Errorf("%w: entry %d of %d", ErrNotExist, i, len(r.x.Entries()))
	}
	if checked, err := r.checks.Result(i); checked {
		return err
	}
	s, e := r.x.HeaderRange(i)
	if err := r.checkSpans(ctx, r.x.SpanOf(s), r.x.SpanOf(max(e-1, s))); err != nil {
		return fmt.Errorf("ztoc: read header of %.200q: %w", r.x.Entries()[i].Name, err)
	}
	_, err := r.checks.Result(i)
	return err
}

// checkSpans gets the inflated spans a..b and records the header check of
// every entry whose header run lies in them.
func (r *Reader) checkSpans(ctx context.Context, a, b SpanID) error {
	spans, err := r.spans(ctx, a, b)
	if err != nil {
		return err
	}
	r.x.CheckHeadersIn(a, spans, r.checks)
	return nil
}

// HeaderChecks returns the Reader's record of header checks.
func (r *Reader) HeaderChecks() *HeaderChecks { return r.checks }
