package layerstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/containers/image/v5/docker/reference"
	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/spans"
)

// Background fetch tuning that is not configuration.
const (
	// tokenValidity is how long credentials must stay valid when a
	// background batch starts (authbridge refreshes them beforehand
	// otherwise).
	tokenValidity = 10 * time.Second
	// maxBatchFailures ends a layer's background fetch after this many
	// failed batches in a row (each already retried by the registry
	// client).
	maxBatchFailures = 8
)

// fillState is where a layer's background fetch and verification stand.
type fillState int

const (
	fillWaiting   fillState = iota // queued
	fillRunning                    // fetching spans
	fillVerifying                  // every span here: verifying the whole layer
	fillDone                       // fetched and verified
	fillStopped                    // the cache cannot hold the layer
	fillFailed                     // the registry kept failing, or verification failed
)

// layerFill is one layer's background work. Guarded by filler.mu.
type layerFill struct {
	l        *layer
	state    fillState
	reason   string // why stopped or failed
	claimed  []bool // spans a worker is fetching
	fetched  []bool // spans fetched by finished batches
	failures int
	retryAt  time.Time
	bytes    int64
	started  time.Time
	finished time.Time
}

// ended reports whether lf's work is over (done, stopped or failed): a
// batch still in flight then changes nothing but the byte count.
func (f *layerFill) ended() bool {
	return f.state == fillDone || f.state == fillStopped || f.state == fillFailed
}

func (f *layerFill) String() string {
	switch f.state {
	case fillWaiting:
		return "waiting"
	case fillRunning:
		return fmt.Sprintf("running (%d bytes so far)", f.bytes)
	case fillVerifying:
		return fmt.Sprintf("verifying (%d bytes fetched)", f.bytes)
	case fillDone:
		return fmt.Sprintf("done in %s (%d bytes)", f.finished.Sub(f.started).Round(time.Millisecond), f.bytes)
	case fillStopped:
		return "stopped: " + f.reason
	case fillFailed:
		return "failed: " + f.reason
	}
	return "unknown"
}

// fillerConfig is what the filler works with.
type fillerConfig struct {
	// prefetch fetches every span of a layer (spans near those read on
	// demand first) before verifying it; without it, verification fetches
	// the layer in order at its own, lowest, priority.
	prefetch bool
	// verify checks every layer as a whole once its spans are here
	// (verifyLayer).
	verifyAll   bool
	concurrency int
	batchSize   int64
	ensureFresh func(ctx context.Context, ref reference.Named, minValidity time.Duration) error
	// budget returns how much background data may be in flight now (the
	// measured link carries it quickly), at most max: batches are no larger.
	budget func(max int64) int64
	// idle blocks until the link is idle enough for background fetches
	// (so a batch is chosen next to what containers read meanwhile).
	idle    func(ctx context.Context) error
	verify  func(ctx context.Context, l *layer) error
	metrics *metrics
	log     *logrus.Entry
}

// filler completes every served layer in the background: it prefetches
// the spans not read yet (large batches of adjacent spans, near the spans
// read on demand first, at Prefetch priority: the Scheduler runs them only
// when the link is idle) and then verifies the whole layer. A fixed pool of
// workers serves the layers round-robin; they wait on a condition, not in
// a polling loop.
type filler struct {
	cfg    fillerConfig
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex // guards the fields below
	cond *sync.Cond
	// fills are the layers given to the filler; queue those with work
	// left, served round-robin from next.
	fills map[*layer]*layerFill
	queue []*layerFill
	next  int
	// gen counts changes (workers wait for the next one).
	gen uint64
	// retry wakes the workers when a layer's back-off ends.
	retry *time.Timer
}

func newFiller(cfg fillerConfig) *filler {
	ctx, cancel := context.WithCancel(context.Background())
	f := &filler{cfg: cfg, ctx: ctx, cancel: cancel, fills: make(map[*layer]*layerFill)}
	f.cond = sync.NewCond(&f.mu)
	for i := 0; i < max(cfg.concurrency, 1); i++ {
		f.wg.Add(1)
		go f.worker()
	}
	return f
}

// add queues l (once; a fill that stopped or failed starts again).
func (f *filler) add(l *layer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if lf, ok := f.fills[l]; ok && lf.state != fillStopped && lf.state != fillFailed {
		return
	}
	if !f.cfg.prefetch && (!f.cfg.verifyAll || l.verified.Load()) {
		return // nothing to do
	}
	n := l.spans.NumSpans()
	lf := &layerFill{l: l, state: fillWaiting, claimed: make([]bool, n), fetched: make([]bool, n), started: time.Now()}
	f.fills[l] = lf
	f.queue = append(f.queue, lf)
	f.changedLocked()
}

// remove forgets l (its work stops after the batch in flight).
func (f *filler) remove(l *layer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.fills, l)
	f.dequeueLocked(l)
}

func (f *filler) dequeueLocked(l *layer) {
	for i, lf := range f.queue {
		if lf.l == l {
			f.queue = append(f.queue[:i], f.queue[i+1:]...)
			return
		}
	}
}

// status describes l's background work for `lazypull status`.
func (f *filler) status(l *layer) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if lf, ok := f.fills[l]; ok {
		return lf.String()
	}
	if l.verified.Load() {
		return "verified"
	}
	return "off"
}

// close stops the workers and waits for them.
func (f *filler) close() {
	f.cancel()
	f.changed()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.retry != nil {
		f.retry.Stop()
	}
}

// task is one unit of background work: a batch of spans to fetch, or a
// layer to verify.
type task struct {
	lf     *layerFill
	a, b   int
	size   int64
	verify bool
}

func (f *filler) worker() {
	defer f.wg.Done()
	for {
		// The batch is chosen once the link is idle: next to what
		// containers read meanwhile.
		if err := f.cfg.idle(f.ctx); err != nil {
			return
		}
		t, ok, gen := f.tryTake()
		if f.ctx.Err() != nil {
			return
		}
		if !ok {
			f.waitChange(gen)
			continue
		}
		if t.verify {
			f.runVerify(t.lf)
		} else {
			f.runBatch(t)
		}
	}
}

// tryTake claims the next task, round-robin over layers; ok is false when
// there is none now. gen is the change count it saw (for waitChange).
func (f *filler) tryTake() (t task, ok bool, gen uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	var wake time.Time
	for tries := 0; tries < len(f.queue); tries++ {
		i := (f.next + tries) % len(f.queue)
		lf := f.queue[i]
		if now.Before(lf.retryAt) {
			if wake.IsZero() || lf.retryAt.Before(wake) {
				wake = lf.retryAt
			}
			continue
		}
		if t, ok := f.nextTaskLocked(lf); ok {
			f.next = i + 1
			return t, true, f.gen
		}
	}
	if !wake.IsZero() {
		// A layer backs off after errors: look again when it may go on.
		if f.retry == nil {
			f.retry = time.AfterFunc(time.Until(wake), f.changed)
		} else {
			f.retry.Reset(time.Until(wake))
		}
	}
	return task{}, false, f.gen
}

// changed notes that there may be work: a layer was added, a batch ended,
// a back-off is over, or the filler closes.
func (f *filler) changed() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changedLocked()
}

func (f *filler) changedLocked() {
	f.gen++
	f.cond.Broadcast()
}

// waitChange waits until something changed since gen was seen.
func (f *filler) waitChange(gen uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.gen == gen && f.ctx.Err() == nil {
		f.cond.Wait()
	}
}

// nextTaskLocked claims lf's next task: a batch of spans not here and not
// claimed (starting next to a span read on demand when there is one, at
// most batchSize of compressed data), or, once every span is here, the
// verification.
func (f *filler) nextTaskLocked(lf *layerFill) (task, bool) {
	l := lf.l
	if lf.state == fillVerifying {
		return task{}, false
	}
	n := l.spans.NumSpans()
	if f.cfg.prefetch {
		var hot []int
		for id := 0; id < n; id++ {
			if l.spans.Hot(id) {
				hot = append(hot, id)
			}
		}
		start, best, inFlight := -1, n+1, false
		for id := 0; id < n; id++ {
			if lf.claimed[id] {
				inFlight = true
				continue
			}
			if l.spans.Present(id) {
				continue
			}
			if d := hotDistance(hot, id, n); d < best {
				start, best = id, d
			}
		}
		if start >= 0 {
			limit := f.cfg.batchSize
			if f.cfg.budget != nil {
				limit = f.cfg.budget(limit)
			}
			b, size := start, spanLen(l, start)
			for b+1 < n && !lf.claimed[b+1] && !l.spans.Present(b+1) && size+spanLen(l, b+1) <= limit {
				b++
				size += spanLen(l, b)
			}
			for id := start; id <= b; id++ {
				lf.claimed[id] = true
			}
			return task{lf: lf, a: start, b: b, size: size}, true
		}
		if inFlight {
			return task{}, false
		}
	}
	if !f.cfg.verifyAll || l.verified.Load() {
		f.endLocked(lf, fillDone, "")
		return task{}, false
	}
	lf.state = fillVerifying
	return task{lf: lf, verify: true}, true
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

func spanLen(l *layer, id int) int64 {
	s, e := l.idx.Layout().CompressedRange(id)
	return e - s
}

// runBatch fetches one batch at Prefetch priority with fresh credentials.
func (f *filler) runBatch(t task) {
	l := t.lf.l
	err := f.cfg.ensureFresh(f.ctx, l.latestRef(), tokenValidity)
	if err == nil {
		err = l.spans.Fetch(f.ctx, t.a, t.b, spans.Prefetch)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.changedLocked()
	lf := t.lf
	for id := t.a; id <= t.b; id++ {
		lf.claimed[id] = false
	}
	if f.fills[l] != lf {
		return // removed meanwhile
	}
	if err == nil {
		lf.bytes += t.size
		f.cfg.metrics.prefetched.Add(float64(t.size))
	}
	if lf.ended() {
		// Another batch of the layer, in flight at the same time, ended
		// its fill (the cache cannot hold the layer): it stays ended.
		return
	}
	switch {
	case err == nil:
		lf.state = fillRunning
		lf.failures = 0
		if !l.spans.Present(t.a) {
			f.endLocked(lf, fillStopped, "span cache full")
			return
		}
		// Spans of earlier batches evicted to make room for these: the
		// layer does not fit the cache, and going on would fetch it round
		// and round.
		for id, done := range lf.fetched {
			if done && !l.spans.Present(id) {
				f.endLocked(lf, fillStopped, "span cache too small for the layer")
				return
			}
		}
		for id := t.a; id <= t.b; id++ {
			lf.fetched[id] = true
		}
	case errors.Is(err, spans.ErrPreempted), f.ctx.Err() != nil:
		// The link was needed for a container, or the store closes.
	default:
		lf.failures++
		lf.retryAt = time.Now().Add(time.Duration(1<<min(lf.failures, 6)) * time.Second)
		l.log.WithError(err).WithField("failures", lf.failures).Warn("Background fetch batch failed; retrying later")
		if lf.failures >= maxBatchFailures || l.spans.Bad() != "" {
			f.endLocked(lf, fillFailed, err.Error())
		}
	}
}

// runVerify verifies the whole layer (fetching, in order and at Verify
// priority, what is not here).
func (f *filler) runVerify(lf *layerFill) {
	l := lf.l
	err := f.cfg.verify(f.ctx, l)
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.changedLocked()
	if f.fills[l] != lf || lf.ended() {
		return
	}
	switch {
	case err == nil:
		f.endLocked(lf, fillDone, "")
		l.log.WithField("fill", lf.String()).Info("Layer fully fetched and verified")
	case f.ctx.Err() != nil:
	case errors.Is(err, spans.ErrPreempted):
		lf.state = fillWaiting // verify again when the link is idle
	default:
		lf.failures++
		lf.state = fillWaiting
		lf.retryAt = time.Now().Add(time.Duration(1<<min(lf.failures, 6)) * time.Second)
		if lf.failures >= maxBatchFailures || l.spans.Bad() != "" {
			f.endLocked(lf, fillFailed, err.Error())
		}
	}
}

// endLocked ends lf's work in state st.
func (f *filler) endLocked(lf *layerFill, st fillState, reason string) {
	lf.state, lf.reason, lf.finished = st, reason, time.Now()
	f.dequeueLocked(lf.l)
}
