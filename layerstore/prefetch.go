package layerstore

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lazypull/lazypull/layerstore/spancache"
	"github.com/lazypull/lazypull/ztoc"
)

// Prefetch tuning that is not configuration.
const (
	// demandPoll is how often a paused prefetch worker looks whether
	// on-demand reads are still waiting.
	demandPoll = 5 * time.Millisecond
	// tokenValidity is how long credentials must stay valid when a prefetch
	// batch starts (authbridge refreshes them beforehand otherwise).
	tokenValidity = 10 * time.Second
	// maxBatchFailures ends a layer's prefetch after this many failed
	// batches in a row (each already retried by the registry client).
	maxBatchFailures = 8
	// demandQuiet is how long after an on-demand fetch the prefetcher stays
	// paused, so that what a container reads next does not queue behind
	// megabytes of prefetch on a slow link (reads in layer order get their
	// next spans from the read-ahead meanwhile).
	demandQuiet = time.Second
)

// prefetchState is a layer's background fetch. Guarded by layer.mu.
type prefetchState struct {
	status   string // "", "waiting", "running", "done", "stopped: ...", "failed: ..."
	claimed  []bool // spans a worker is fetching
	fetched  []bool // spans fetched by finished batches
	failures int
	retryAt  time.Time
	bytes    int64
	started  time.Time
	finished time.Time
}

func (p prefetchState) String() string {
	switch p.status {
	case "":
		return "off"
	case "done":
		return fmt.Sprintf("done in %s (%d bytes)", p.finished.Sub(p.started).Round(time.Millisecond), p.bytes)
	case "running":
		return fmt.Sprintf("running (%d bytes so far)", p.bytes)
	}
	return p.status
}

// prefetcher fetches every span of the layers it is given, in the
// background: a fixed pool of workers, large batches of adjacent spans in
// one range request each, spans near those read on demand first, paused
// while on-demand reads wait, optionally capped in bandwidth.
type prefetcher struct {
	s       *Store
	limiter *rateLimiter // nil: no cap
	wake    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu sync.Mutex // guards the fields below
	// active are the layers with spans left to fetch, served round-robin.
	active []*layer
	next   int
}

func newPrefetcher(s *Store) *prefetcher {
	ctx, cancel := context.WithCancel(s.ctx)
	p := &prefetcher{s: s, wake: make(chan struct{}, 1), ctx: ctx, cancel: cancel}
	if !s.cfg.Prefetch.Enabled {
		return p
	}
	if bw := int64(s.cfg.Prefetch.Bandwidth); bw > 0 {
		p.limiter = newRateLimiter(bw, int64(s.cfg.Prefetch.BatchSize))
	}
	for i := 0; i < s.cfg.Prefetch.Concurrency; i++ {
		p.wg.Add(1)
		go p.worker()
	}
	return p
}

// add queues l for prefetching (once).
func (p *prefetcher) add(l *layer) {
	if !p.s.cfg.Prefetch.Enabled {
		return
	}
	l.mu.Lock()
	// Once per layer; a prefetch that failed or stopped starts again with
	// the next lookup of the layer.
	if st := l.pf.status; st != "" && !strings.HasPrefix(st, "failed") && !strings.HasPrefix(st, "stopped") {
		l.mu.Unlock()
		return
	}
	l.pf = prefetchState{status: "waiting", claimed: make([]bool, l.x.NumSpans()), fetched: make([]bool, l.x.NumSpans()), started: time.Now()}
	l.mu.Unlock()
	p.mu.Lock()
	p.active = append(p.active, l)
	p.mu.Unlock()
	p.signal()
}

// remove stops prefetching l.
func (p *prefetcher) remove(l *layer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, a := range p.active {
		if a == l {
			p.active = append(p.active[:i], p.active[i+1:]...)
			return
		}
	}
}

// recentDemand reports whether an on-demand fetch started less than
// demandQuiet ago.
func (p *prefetcher) recentDemand() bool {
	return time.Since(time.Unix(0, p.s.lastDemand.Load())) < demandQuiet
}

func (p *prefetcher) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// close stops the workers and waits for them.
func (p *prefetcher) close() {
	p.cancel()
	p.wg.Wait()
}

type batch struct {
	l    *layer
	a, b ztoc.SpanID
	size int64
}

func (p *prefetcher) worker() {
	defer p.wg.Done()
	for {
		// On-demand reads first: wait while a container waits for spans,
		// and for a moment after.
		for p.s.demand.Load() > 0 || p.recentDemand() {
			if !sleepCtx(p.ctx, demandPoll) {
				return
			}
		}
		bt, wait := p.pick()
		if bt == nil {
			t := time.NewTimer(wait)
			select {
			case <-p.ctx.Done():
				t.Stop()
				return
			case <-p.wake:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		p.run(bt)
		if p.ctx.Err() != nil {
			return
		}
	}
}

// pick chooses the next batch, round-robin over layers. Without work it
// returns how long to wait at most (layers backing off after errors).
func (p *prefetcher) pick() (*batch, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	wait := time.Minute
	now := time.Now()
	for tries := 0; tries < len(p.active); tries++ {
		i := (p.next + tries) % len(p.active)
		l := p.active[i]
		bt, done, retryIn := l.nextBatch(int64(p.s.cfg.Prefetch.BatchSize), now)
		if done {
			// Nothing left and nothing in flight: finish it (verification
			// runs on a worker, outside this lock).
			p.active = append(p.active[:i], p.active[i+1:]...)
			p.s.background(func(context.Context) { p.finish(l) })
			return p.pickAgainLocked()
		}
		if bt != nil {
			p.next = i + 1
			return bt, 0
		}
		if retryIn > 0 && retryIn < wait {
			wait = retryIn
		}
	}
	return nil, wait
}

func (p *prefetcher) pickAgainLocked() (*batch, time.Duration) {
	p.signal() // another worker (or this one) looks again
	return nil, 0
}

// nextBatch claims the next run of spans to prefetch: not cached, not being
// fetched, starting next to a span read on demand when there is one, at most
// maxBytes of compressed data. done reports that nothing is left at all.
func (l *layer) nextBatch(maxBytes int64, now time.Time) (bt *batch, done bool, retryIn time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := &l.pf
	if now.Before(st.retryAt) {
		return nil, false, st.retryAt.Sub(now)
	}
	n := l.x.NumSpans()
	cached := func(id int) bool {
		return l.s.spans.Has(spancache.Key{Layer: l.digest, Span: int32(id)})
	}
	// Spans read on demand, in order: prefetch starts next to them.
	var hot []int
	for id := range l.hot {
		if l.hot[id].Load() {
			hot = append(hot, id)
		}
	}
	start, best, inFlight := -1, n+1, false
	for id := 0; id < n; id++ {
		if st.claimed[id] {
			inFlight = true
			continue
		}
		if cached(id) {
			continue
		}
		if d := hotDistance(hot, id, n); d < best {
			start, best = id, d
		}
	}
	if start < 0 {
		return nil, !inFlight, 0
	}
	b := start
	size := spanLen(l.x, start)
	for b+1 < n && !st.claimed[b+1] && !cached(b+1) && size+spanLen(l.x, b+1) <= maxBytes {
		b++
		size += spanLen(l.x, b)
	}
	for id := start; id <= b; id++ {
		st.claimed[id] = true
	}
	if st.status == "waiting" {
		st.status = "running"
	}
	return &batch{l: l, a: ztoc.SpanID(start), b: ztoc.SpanID(b), size: size}, false, 0
}

// hotDistance is the distance from span id to the nearest span of hot (the
// sorted spans read on demand), or n when there is none.
func hotDistance(hot []int, id, n int) int {
	i := sort.SearchInts(hot, id)
	d := n
	if i < len(hot) {
		d = hot[i] - id
	}
	if i > 0 {
		d = min(d, id-hot[i-1])
	}
	return d
}

func spanLen(x *ztoc.LayerIndex, id int) int64 {
	s, e := x.SpanCompressedRange(ztoc.SpanID(id))
	return e - s
}

// run fetches one batch: bandwidth first, then fresh credentials, then one
// range request for the whole run of spans.
func (p *prefetcher) run(bt *batch) {
	l := bt.l
	err := func() error {
		if p.limiter != nil {
			if err := p.limiter.wait(p.ctx, bt.size); err != nil {
				return err
			}
		}
		if err := p.s.client.EnsureFresh(p.ctx, l.latestRef(), tokenValidity); err != nil {
			return err
		}
		_, err := l.src.fetch(p.ctx, bt.a, bt.b, false)
		return err
	}()
	l.mu.Lock()
	for id := bt.a; id <= bt.b; id++ {
		l.pf.claimed[id] = false
	}
	st := &l.pf
	switch {
	case err == nil:
		st.failures = 0
		st.bytes += bt.size
		p.s.metrics.prefetched.Add(float64(bt.size))
		if !l.s.spans.Has(spancache.Key{Layer: l.digest, Span: int32(bt.a)}) {
			// Fetched but not kept: the cache is full of spans in use.
			st.status = "stopped: span cache full"
			l.mu.Unlock()
			p.remove(l)
			return
		}
		// Spans of earlier batches evicted to make room for these: the
		// layer does not fit the cache, and going on would fetch it round
		// and round.
		for id, f := range st.fetched {
			if f && !l.s.spans.Has(spancache.Key{Layer: l.digest, Span: int32(id)}) {
				st.status = "stopped: span cache too small for the layer"
				l.mu.Unlock()
				p.remove(l)
				return
			}
		}
		for id := bt.a; id <= bt.b; id++ {
			st.fetched[id] = true
		}
	case p.ctx.Err() != nil:
	default:
		st.failures++
		backoff := time.Duration(1<<min(st.failures, 6)) * time.Second
		st.retryAt = time.Now().Add(backoff)
		l.log.WithError(err).WithField("failures", st.failures).Warn("Prefetch batch failed; retrying later")
		if st.failures >= maxBatchFailures || l.bad.Load() != nil {
			st.status = fmt.Sprintf("failed: %v", err)
			l.mu.Unlock()
			p.remove(l)
			return
		}
	}
	l.mu.Unlock()
}

// finish marks a layer's prefetch done and verifies the whole layer.
func (p *prefetcher) finish(l *layer) {
	l.mu.Lock()
	if l.pf.status == "waiting" || l.pf.status == "running" {
		l.pf.status = "done"
		l.pf.finished = time.Now()
	}
	l.mu.Unlock()
	l.log.WithField("prefetch", l.pf.String()).Info("Layer fully fetched")
	p.s.verifyLayer(p.ctx, l)
}

// rateLimiter is a token bucket in bytes.
type rateLimiter struct {
	rate, burst int64

	mu     sync.Mutex // guards tokens and last
	tokens float64
	last   time.Time
}

func newRateLimiter(rate, burst int64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: burst, tokens: float64(burst), last: time.Now()}
}

// wait blocks until n bytes may be sent.
func (r *rateLimiter) wait(ctx context.Context, n int64) error {
	r.mu.Lock()
	now := time.Now()
	r.tokens = min(float64(r.burst), r.tokens+now.Sub(r.last).Seconds()*float64(r.rate))
	r.last = now
	r.tokens -= float64(n)
	deficit := -r.tokens
	r.mu.Unlock()
	if deficit <= 0 {
		return nil
	}
	if !sleepCtx(ctx, time.Duration(deficit/float64(r.rate)*float64(time.Second))) {
		return ctx.Err()
	}
	return nil
}

// sleepCtx sleeps for d; it reports false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
