package layerstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/remote"
	"github.com/lazypull/lazypull/layerstore/spancache"
	"github.com/lazypull/lazypull/ztoc"
)

// blobSource reads byte ranges of one layer blob from a registry. remote.Blob
// implements it; tests substitute fakes for faults a registry cannot produce
// on demand.
type blobSource interface {
	ReadRanges(ctx context.Context, ranges []remote.Range) ([][]byte, error)
}

// spanSource gives ztoc.Reader the compressed spans of one layer: from the
// on-disk span cache (verified on every load; a bad entry is dropped), else
// from the registry, every run of missing spans in one range request. A span
// is fetched once however many readers want it at the same time.
type spanSource struct {
	layer *layer
	x     *ztoc.LayerIndex
	cache *spancache.Cache
	log   *logrus.Entry
	// demand counts on-demand fetches in flight, daemon-wide; the prefetcher
	// pauses while it is not zero. lastDemand is when the last one started
	// (unix nanoseconds); the prefetcher holds back for a while after it.
	demand     *atomic.Int64
	lastDemand *atomic.Int64

	// blobs returns the registry sources of the layer, preferred first.
	blobs func() []blobSource

	mu      sync.Mutex // guards flights
	flights map[ztoc.SpanID]*spanFlight

	fetchedBytes atomic.Int64 // compressed bytes received from registries
	fetchedSpans atomic.Int64
	cacheHits    atomic.Int64
	badCached    atomic.Int64 // cache entries that failed verification
}

type spanFlight struct {
	done chan struct{}
	data []byte
	err  error
}

var _ ztoc.VerifyingSource = (*spanSource)(nil)

// VerifiesSpans implements ztoc.VerifyingSource: cached spans are verified
// when loaded, fetched ones when they arrive.
func (s *spanSource) VerifiesSpans() bool { return true }

// FetchSpans implements ztoc.SpanSource for reads on demand.
func (s *spanSource) FetchSpans(ctx context.Context, first, last ztoc.SpanID) ([][]byte, error) {
	return s.fetch(ctx, first, last, true)
}

// fetch returns spans first..last. onDemand marks reads a container waits
// for (the prefetcher yields to them).
func (s *spanSource) fetch(ctx context.Context, first, last ztoc.SpanID, onDemand bool) ([][]byte, error) {
	out := make([][]byte, last-first+1)
	var missing []ztoc.SpanID
	for id := first; id <= last; id++ {
		if data, ok := s.cached(id); ok {
			out[id-first] = data
			continue
		}
		missing = append(missing, id)
	}
	if len(missing) == 0 {
		return out, nil
	}
	if onDemand {
		s.demand.Add(1)
		defer s.demand.Add(-1)
		s.lastDemand.Store(time.Now().UnixNano())
		// Reading on from where the last read ended: once these spans are
		// here, fetch the next ones in the background, so a program reading
		// files in layer order finds them on its way.
		if first > 0 && s.layer.hot[first-1].Load() {
			defer s.readAhead(last + 1)
		}
	}

	// Claim the spans nobody is fetching; wait for the others.
	own := make(map[ztoc.SpanID]*spanFlight)
	wait := make(map[ztoc.SpanID]*spanFlight)
	s.mu.Lock()
	for _, id := range missing {
		if f, ok := s.flights[id]; ok {
			wait[id] = f
			continue
		}
		f := &spanFlight{done: make(chan struct{})}
		s.flights[id] = f
		own[id] = f
	}
	s.mu.Unlock()

	var firstErr error
	if len(own) > 0 {
		// Detached from the caller's cancellation: others may wait for these
		// spans too, and a fetched span is worth caching anyway.
		fctx := context.WithoutCancel(ctx)
		if err := s.fetchOwned(fctx, own); err != nil {
			firstErr = err
		}
		for id, f := range own {
			if id >= first && id <= last {
				out[id-first] = f.data
			}
		}
	}
	for id, f := range wait {
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.err != nil && firstErr == nil {
			firstErr = f.err
		}
		out[id-first] = f.data
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return out, nil
}

// readAheadBytes is how much compressed data a sequential reader's
// read-ahead asks for (at least one span).
const readAheadBytes = 8 << 20

// readAhead fetches, in the background, the spans from id on that are not
// cached or already coming, up to readAheadBytes, in one request. It is not
// an on-demand fetch: nothing waits for it, and an error only means the
// reader fetches the span itself later.
func (s *spanSource) readAhead(id ztoc.SpanID) {
	n := ztoc.SpanID(s.x.NumSpans())
	end, size := id, int64(0)
	for ; end < n && (end == id || size < readAheadBytes); end++ {
		if s.cache.Has(spancache.Key{Layer: s.layer.digest, Span: int32(end)}) {
			break
		}
		c0, c1 := s.x.SpanCompressedRange(end)
		size += c1 - c0
	}
	if end == id {
		return
	}
	s.layer.s.background(func(ctx context.Context) {
		if _, err := s.fetch(ctx, id, end-1, false); err != nil && ctx.Err() == nil {
			s.log.WithError(err).WithField("spans", fmt.Sprintf("%d-%d", id, end-1)).Debug("Read-ahead failed")
		}
	})
}

// cached returns span id from the disk cache when it is there and intact.
func (s *spanSource) cached(id ztoc.SpanID) ([]byte, bool) {
	k := spancache.Key{Layer: s.layer.digest, Span: int32(id)}
	data, err := s.cache.Get(k)
	if err != nil {
		if !errors.Is(err, spancache.ErrNotFound) {
			s.log.WithError(err).WithField("span", id).Warn("Span cache read failed")
		}
		return nil, false
	}
	if err := s.x.VerifySpan(id, data); err != nil {
		s.badCached.Add(1)
		s.log.WithError(err).WithField("span", id).Warn("Dropping corrupt span cache entry")
		_ = s.cache.Remove(k)
		return nil, false
	}
	s.cacheHits.Add(1)
	return data, true
}

// fetchOwned fetches the claimed spans from the registry (contiguous runs as
// single ranges, all runs in one ReadRanges call), verifies and caches them,
// and lands every flight.
func (s *spanSource) fetchOwned(ctx context.Context, own map[ztoc.SpanID]*spanFlight) error {
	ids := make([]ztoc.SpanID, 0, len(own))
	for id := range own {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	type run struct{ a, b ztoc.SpanID }
	var runs []run
	for _, id := range ids {
		if n := len(runs); n > 0 && runs[n-1].b+1 == id {
			runs[n-1].b = id
		} else {
			runs = append(runs, run{id, id})
		}
	}
	ranges := make([]remote.Range, len(runs))
	for i, r := range runs {
		c0, _ := s.x.SpanCompressedRange(r.a)
		_, c1 := s.x.SpanCompressedRange(r.b)
		ranges[i] = remote.Range{Offset: c0, Length: c1 - c0}
	}
	bufs, err := s.readRanges(ctx, ranges)
	var firstErr error
	for i, r := range runs {
		var spans [][]byte
		if err == nil {
			spans = ztoc.SplitSpans(s.x, r.a, r.b, bufs[i])
		}
		for id := r.a; id <= r.b; id++ {
			f := own[id]
			if err != nil {
				f.err = fmt.Errorf("fetch span %d of %s: %w", id, s.layer.digest, err)
			} else {
				f.data, f.err = s.accept(ctx, id, spans[id-r.a])
			}
			if f.err != nil && firstErr == nil {
				firstErr = f.err
			}
		}
	}
	s.mu.Lock()
	for id, f := range own {
		delete(s.flights, id)
		close(f.done)
	}
	s.mu.Unlock()
	return firstErr
}

// accept verifies a span fetched from the registry and caches it. A span that
// does not match its digest is fetched once more on its own (a transfer
// problem); a second mismatch means the index or the registry's blob is not
// what the image says, and the layer is marked bad.
func (s *spanSource) accept(ctx context.Context, id ztoc.SpanID, data []byte) ([]byte, error) {
	err := s.x.VerifySpan(id, data)
	if err != nil {
		for _, b := range s.blobs() { // a mirror that served it is left out for the refetch
			if r, ok := b.(interface{ RejectLastRead() }); ok {
				r.RejectLastRead()
			}
		}
		c0, c1 := s.x.SpanCompressedRange(id)
		bufs, rerr := s.readRanges(ctx, []remote.Range{{Offset: c0, Length: c1 - c0}})
		if rerr != nil {
			return nil, fmt.Errorf("refetch span %d of %s: %w", id, s.layer.digest, rerr)
		}
		data = bufs[0]
		if err = s.x.VerifySpan(id, data); err != nil {
			s.layer.markBad(fmt.Sprintf("span %d from the registry does not match its digest twice", id))
			return nil, fmt.Errorf("fetch span %d of %s: %w", id, s.layer.digest, err)
		}
	}
	s.fetchedSpans.Add(1)
	s.store(id, data)
	return data, nil
}

// readRanges asks the layer's registry sources in turn.
func (s *spanSource) readRanges(ctx context.Context, ranges []remote.Range) ([][]byte, error) {
	var errs []error
	for _, b := range s.blobs() {
		bufs, err := b.ReadRanges(ctx, ranges)
		if err == nil {
			for _, buf := range bufs {
				s.fetchedBytes.Add(int64(len(buf)))
			}
			return bufs, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no registry source for the layer")
	}
	return nil, errors.Join(errs...)
}

// store writes a verified span to the disk cache; a full cache or a write
// error only costs a refetch later. Spans of a layer found bad are not kept:
// markBad sets the flag before it drops the layer's spans, so a span that
// lands meanwhile is removed here.
func (s *spanSource) store(id ztoc.SpanID, data []byte) {
	if s.layer.bad.Load() != nil {
		return
	}
	k := spancache.Key{Layer: s.layer.digest, Span: int32(id)}
	err := s.cache.Put(k, data)
	if err != nil && !errors.Is(err, spancache.ErrFull) {
		s.log.WithError(err).WithField("span", id).Warn("Could not cache span")
	}
	if err == nil && s.layer.bad.Load() != nil {
		_ = s.cache.Remove(k)
	}
}
