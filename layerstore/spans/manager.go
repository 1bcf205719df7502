package spans

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/diskcache"
	"github.com/lazypull/lazypull/layerstore/remote"
)

// ErrLayerBad is returned for every read of a layer found not to be what
// its image says (a span that does not match its digest twice, or a failed
// whole-layer verification).
var ErrLayerBad = errors.New("layer failed verification")

// ErrSpanCorrupt is wrapped by Layout.Inflate errors meaning that the
// compressed bytes, though they passed Verify, are not the span (a digest
// the index keeps of the uncompressed data does not match, or they do not
// decompress). The Manager then fetches the span once more; a second such
// error makes the layer bad. Nothing of a span that fails is served.
var ErrSpanCorrupt = errors.New("span does not inflate to what the index says")

// Layout is the span geometry of one layer and what checks and inflates its
// spans. Span ids run from 0 to NumSpans()-1; uncompressed ranges tile the
// layer's uncompressed stream in order.
type Layout interface {
	NumSpans() int
	// CompressedRange is span id's byte range [start, end) in the blob.
	CompressedRange(id int) (start, end int64)
	// UncompressedRange is the range [start, end) of the uncompressed
	// stream that span id inflates to.
	UncompressedRange(id int) (start, end int64)
	// SpanOf returns the span holding uncompressed offset off.
	SpanOf(off int64) int
	// Verify checks span id's compressed bytes (length and digest, or
	// what the format can check of them cheaply); an error means they are
	// not the span.
	Verify(id int, compressed []byte) error
	// Inflate returns span id's uncompressed bytes from its verified
	// compressed bytes, in dst when it has room. An error wrapping
	// ErrSpanCorrupt means the bytes are not the span (formats whose
	// digests cover uncompressed data check them here, not in Verify).
	Inflate(id int, compressed, dst []byte) ([]byte, error)
}

// Preparer is a Layout that wants to know which spans are about to be
// fetched (e.g. to fetch what inflating them needs at the same time).
// Prepare runs on a goroutine of the Manager, beside the fetch.
type Preparer interface {
	Prepare(ids []int)
}

// Source reads byte ranges of the layer blob: a registry (remote.Blob), or
// a fake in tests.
type Source interface {
	ReadRanges(ctx context.Context, ranges []remote.Range) ([][]byte, error)
}

// Options are what a Manager works with.
type Options struct {
	Layout Layout
	// Sources returns the registry sources of the blob, preferred first;
	// each fetch asks them in turn.
	Sources func() []Source
	// Cache keeps spans on disk under Group: "c<id>" compressed, "u<id>"
	// inflated.
	Cache *diskcache.Cache
	Group string
	// Scheduler gives fetches their turn.
	Scheduler *Scheduler
	// ReadAheadBytes is how much compressed data a sequential reader's
	// read-ahead asks for at once (at least one span). Default 8 MiB;
	// negative disables read-ahead.
	ReadAheadBytes int64
	// OnBad is called once, on its own goroutine, when the layer is found
	// bad by a fetch (a span that did not match its digest twice).
	OnBad func(reason string)
	// Log receives the Manager's warnings. Default: silent.
	Log *logrus.Entry
}

// Stats are a Manager's counters.
type Stats struct {
	// FetchedBytes and FetchedSpans count what came from registries.
	FetchedBytes, FetchedSpans int64
	// Inflations counts spans inflated; DiskReads reads served from
	// inflated spans on disk.
	Inflations, DiskReads int64
	// BadCached counts cached spans that failed verification (dropped).
	BadCached int64
	// Corrupt counts spans whose bytes passed Verify but did not inflate
	// to what the index says (fetched again).
	Corrupt int64
}

// Manager owns the spans of one layer. Safe for concurrent use.
type Manager struct {
	o      Options
	n      int
	size   int64 // uncompressed length of the stream
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // fetch jobs and inflations

	bad atomic.Pointer[string]
	// profiled is set once Warm was asked for spans (a start-up profile):
	// reads then get no read-ahead, the profile says what they need.
	profiled atomic.Bool
	stats    struct {
		fetchedBytes, fetchedSpans, inflations, diskReads, badCached, corrupt atomic.Int64
	}

	mu    sync.Mutex // guards spans and closed
	spans []span
	// closed is set by Close: no new jobs or inflations start.
	closed bool
}

// span is what the Manager holds of one span in memory: its flights and the
// bytes not yet committed to disk.
type span struct {
	job  *job       // fetching: the fetch in flight
	inf  *inflation // the inflation in flight
	comp []byte     // fetched, verified, being committed
	// landed is the job whose bytes comp are, until they are committed.
	landed *job
	unc    []byte // inflated, being committed
	hot    bool   // read on demand
	// uncChecked is set once the inflated span on disk was checked
	// against its digest (by this Manager).
	uncChecked bool
}

// job fetches runs of adjacent spans with one request (one range per run).
type job struct {
	runs   []run
	first  int // the first span of the first run
	ticket *Ticket
	done   chan struct{}
	// committed is closed once the job's spans were written to disk (or
	// found no room there).
	committed chan struct{}
	// Set before done is closed: per span from first to the end of the
	// last run, its verified compressed bytes, or an error (spans between
	// runs are not the job's).
	data [][]byte
	errs []error
}

// run is spans a..b.
type run struct{ a, b int }

// err returns the outcome of span id of the job.
func (j *job) err(id int) error { return j.errs[id-j.first] }

// ids calls fn for every span of the job.
func (j *job) ids(fn func(id int)) {
	for _, r := range j.runs {
		for id := r.a; id <= r.b; id++ {
			fn(id)
		}
	}
}

// inflation inflates one span.
type inflation struct {
	done chan struct{}
	data []byte
	err  error
}

// New returns the Manager of a layer.
func New(o Options) *Manager {
	if o.ReadAheadBytes == 0 {
		o.ReadAheadBytes = 8 << 20
	}
	if o.Log == nil {
		silent := logrus.New()
		silent.SetOutput(io.Discard)
		o.Log = logrus.NewEntry(silent)
	}
	n := o.Layout.NumSpans()
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{o: o, n: n, ctx: ctx, cancel: cancel, spans: make([]span, n)}
	if n > 0 {
		_, m.size = o.Layout.UncompressedRange(n - 1)
	}
	return m
}

// NumSpans returns the number of spans.
func (m *Manager) NumSpans() int { return m.n }

// Close cancels the fetches and inflations in flight and waits for them.
// Reads after Close fail.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

// MarkBad takes the layer out of service: every later read fails with
// ErrLayerBad. It reports whether the layer was good until now.
func (m *Manager) MarkBad(reason string) bool {
	return m.bad.CompareAndSwap(nil, &reason)
}

// Bad returns the reason the layer is bad, or "".
func (m *Manager) Bad() string {
	if r := m.bad.Load(); r != nil {
		return *r
	}
	return ""
}

func (m *Manager) badErr() error {
	if r := m.bad.Load(); r != nil {
		return fmt.Errorf("%w: %s", ErrLayerBad, *r)
	}
	return nil
}

// Stats returns the counters.
func (m *Manager) Stats() Stats {
	return Stats{
		FetchedBytes: m.stats.fetchedBytes.Load(),
		FetchedSpans: m.stats.fetchedSpans.Load(),
		Inflations:   m.stats.inflations.Load(),
		DiskReads:    m.stats.diskReads.Load(),
		BadCached:    m.stats.badCached.Load(),
		Corrupt:      m.stats.corrupt.Load(),
	}
}

func (m *Manager) compKey(id int) diskcache.Key {
	return diskcache.Key{Group: m.o.Group, Name: "c" + strconv.Itoa(id)}
}

func (m *Manager) uncKey(id int) diskcache.Key {
	return diskcache.Key{Group: m.o.Group, Name: "u" + strconv.Itoa(id)}
}

// presentLocked reports whether span id is fetched or inflated.
func (m *Manager) presentLocked(id int) bool {
	sp := &m.spans[id]
	return sp.comp != nil || sp.unc != nil || m.o.Cache.Has(m.compKey(id)) || m.o.Cache.Has(m.uncKey(id))
}

// Present reports whether span id is here (fetched or inflated).
func (m *Manager) Present(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.presentLocked(id)
}

// Hot reports whether span id was read on demand.
func (m *Manager) Hot(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.spans[id].hot
}

// dropIfBad removes k again when the layer went bad while k was being
// written (whoever dropped the layer's spans may have been first).
func (m *Manager) dropIfBad(k diskcache.Key) {
	if m.bad.Load() != nil {
		_ = m.o.Cache.Remove(k)
	}
}

// Idle reports whether nothing is in flight: no fetch, no inflation, no
// bytes waiting to be written to disk.
func (m *Manager) Idle() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.spans {
		sp := &m.spans[i]
		if sp.job != nil || sp.inf != nil || sp.comp != nil || sp.unc != nil {
			return false
		}
	}
	return true
}

// Counts returns how many spans are here and how many are being fetched.
func (m *Manager) Counts() (present, fetching int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := range m.spans {
		if m.spans[id].job != nil {
			fetching++
		} else if m.presentLocked(id) {
			present++
		}
	}
	return present, fetching
}

// ReadAt reads the layer's uncompressed stream at off for a container
// (Demand priority), fetching and inflating the spans it needs; the spans
// count as read (prefetch starts next to them), and a reader going through
// the layer in order gets the next spans read ahead. It returns io.EOF with
// a short count at the end of the stream. Canceling ctx ends only this
// read's wait.
func (m *Manager) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return m.readAt(ctx, p, off, true)
}

// Peek is ReadAt for the store's own checks (a tar header before a file's
// data): it neither marks spans read nor reads ahead.
func (m *Manager) Peek(ctx context.Context, p []byte, off int64) (int, error) {
	return m.readAt(ctx, p, off, false)
}

func (m *Manager) readAt(ctx context.Context, p []byte, off int64, hint bool) (int, error) {
	if err := m.badErr(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= m.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), m.size)
	first, last := m.o.Layout.SpanOf(off), m.o.Layout.SpanOf(end-1)
	sequential := hint && m.markHot(first, last)
	if err := m.ensure(ctx, first, last, Demand); err != nil {
		return 0, err
	}
	if sequential {
		m.readAhead(last + 1)
	}
	n := 0
	for id := first; id <= last; id++ {
		u0, u1 := m.o.Layout.UncompressedRange(id)
		lo, hi := max(off, u0), min(end, u1)
		if lo >= hi {
			continue
		}
		if err := m.readSpan(ctx, id, p[lo-off:hi-off], lo-u0); err != nil {
			return n, err
		}
		n += int(hi - lo)
	}
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// markHot marks first..last read on demand; it reports whether the span
// before first was (a reader going through the layer in order).
func (m *Manager) markHot(first, last int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := first; id <= last; id++ {
		m.spans[id].hot = true
	}
	return first > 0 && m.spans[first-1].hot
}

// Fetch makes spans first..last present, fetching the missing ones at
// priority p, and waits for them.
func (m *Manager) Fetch(ctx context.Context, first, last int, p Priority) error {
	if err := m.usable(first, last); err != nil {
		return err
	}
	return m.ensure(ctx, first, last, p)
}

// Start starts fetching the missing spans of first..last at priority p
// (raising those already being fetched) and returns without waiting: a
// later Fetch or read of them waits for these fetches. Close stops them.
func (m *Manager) Start(first, last int, p Priority) error {
	if err := m.usable(first, last); err != nil {
		return err
	}
	_, err := m.claim(first, last, p)
	return err
}

// usable reports why spans first..last cannot be fetched: the layer is
// bad, or they are out of range.
func (m *Manager) usable(first, last int) error {
	if err := m.badErr(); err != nil {
		return err
	}
	if first < 0 || last >= m.n || first > last {
		return fmt.Errorf("spans %d-%d out of range (%d spans)", first, last, m.n)
	}
	return nil
}

// ensure claims the missing spans of first..last (one job per run of
// adjacent missing spans), raises the jobs already fetching others to p,
// and waits for all of them. A job preempted while this caller waited is
// retried (the caller's own priority may be foreground).
func (m *Manager) ensure(ctx context.Context, first, last int, p Priority) error {
	for {
		jobs, err := m.claim(first, last, p)
		if err != nil {
			return err
		}
		retry := false
		for _, j := range jobs {
			select {
			case <-j.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			var firstErr error
			j.ids(func(id int) {
				if id < first || id > last || firstErr != nil {
					return
				}
				switch err := j.err(id); {
				case err == nil:
				case errors.Is(err, ErrPreempted) && !p.background():
					retry = true
				default:
					firstErr = err
				}
			})
			if firstErr != nil {
				return firstErr
			}
			if p.background() {
				// Background clients look at what is on disk next: wait
				// until the spans are there (or found no room).
				select {
				case <-j.committed:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		if !retry {
			return nil
		}
	}
}

// claim starts one job for the missing spans of first..last at priority p
// (one range per run of adjacent missing spans) and returns every job
// covering a span of the range.
func (m *Manager) claim(first, last int, p Priority) ([]*job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("spans: %w", context.Canceled)
	}
	var jobs []*job
	var runs []run
	runStart := -1
	flush := func(end int) {
		if runStart >= 0 {
			runs = append(runs, run{runStart, end})
			runStart = -1
		}
	}
	for id := first; id <= last; id++ {
		sp := &m.spans[id]
		switch {
		case sp.job != nil:
			flush(id - 1)
			sp.job.ticket.Raise(p)
			if !slices.Contains(jobs, sp.job) {
				jobs = append(jobs, sp.job)
			}
		case m.presentLocked(id):
			flush(id - 1)
		default:
			if runStart < 0 {
				runStart = id
			}
		}
	}
	flush(last)
	if len(runs) > 0 {
		jobs = append(jobs, m.startJobLocked(runs, p))
	}
	return jobs, nil
}

// startJobLocked claims the spans of runs (missing -> fetching) and starts
// their fetch.
func (m *Manager) startJobLocked(runs []run, p Priority) *job {
	for _, r := range runs {
		for id := r.a; id <= r.b; id++ {
			if m.spans[id].job != nil || m.presentLocked(id) {
				panic(fmt.Sprintf("spans: claim of span %d, which is not missing", id))
			}
		}
	}
	return m.newJobLocked(runs, p)
}

// newJobLocked starts the fetch of runs (sorted, disjoint), none of whose
// spans is being fetched.
func (m *Manager) newJobLocked(runs []run, p Priority) *job {
	j := &job{runs: runs, first: runs[0].a, done: make(chan struct{}), committed: make(chan struct{})}
	var size int64
	for _, r := range runs {
		c0, _ := m.o.Layout.CompressedRange(r.a)
		_, c1 := m.o.Layout.CompressedRange(r.b)
		size += c1 - c0
	}
	j.ticket = m.o.Scheduler.Ticket(m.ctx, p, size)
	j.ids(func(id int) {
		if m.spans[id].job != nil {
			panic(fmt.Sprintf("spans: span %d claimed twice", id))
		}
		m.spans[id].job = j
	})
	m.wg.Add(1)
	go m.run(j)
	return j
}

// warmBatch is how many spans of a Warm request go in one request. Small:
// the Scheduler keeps up to fetch.concurrency requests in flight, each
// buffering its spans (real-image benchmark, second machine: 16 gave a
// peak RSS of 102-111 MiB, 4 gave 92 MiB, as fast).
const warmBatch = 4

// Warm fetches the spans ids that are missing, in the order given, at
// priority p, in batches of adjacent spans (one request each, batches in
// flight at once within the Scheduler's budget), and inflates each, so
// that reads predicted by a start-up profile find them on disk; from then
// on reads get no read-ahead (on the real-image benchmark it doubled the
// bytes a profiled start fetched). It does not wait; Close stops it.
func (m *Manager) Warm(ids []int, p Priority) {
	if len(ids) > 0 {
		m.profiled.Store(true)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	for start := 0; start < len(ids); start += warmBatch {
		var batch []int
		for _, id := range ids[start:min(start+warmBatch, len(ids))] {
			if id >= 0 && id < m.n && m.spans[id].job == nil && !m.presentLocked(id) && !slices.Contains(batch, id) {
				batch = append(batch, id)
			}
		}
		if len(batch) == 0 {
			continue
		}
		slices.Sort(batch)
		var runs []run
		for _, id := range batch {
			if n := len(runs); n > 0 && runs[n-1].b+1 == id {
				runs[n-1].b = id
			} else {
				runs = append(runs, run{id, id})
			}
		}
		j := m.newJobLocked(runs, p)
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			select {
			case <-j.done:
			case <-m.ctx.Done():
				return
			}
			// One inflation at a time per batch, a few over all
			// Managers: a profile names hundreds of spans, and
			// inflating them all at once (1 MiB buffers each) was the
			// daemon's peak memory, for no gain on a few cores. The
			// batch's fetched bytes are not held meanwhile (they are
			// read back from where they were committed).
			var ids []int
			j.ids(func(id int) {
				if j.err(id) == nil {
					ids = append(ids, id)
				}
			})
			j = nil
			for _, id := range ids {
				select {
				case warmInflations <- struct{}{}:
				case <-m.ctx.Done():
					return
				}
				if inf := m.startInflation(id); inf != nil {
					select {
					case <-inf.done:
					case <-m.ctx.Done():
					}
				}
				<-warmInflations
			}
		}()
	}
}

// warmInflations bounds the inflations Warm runs at once, over all
// Managers (inflating is CPU work: more than the cores do not finish
// sooner, and each holds its span's bytes).
var warmInflations = make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))

// readAhead fetches, in the background at ReadAhead priority, the missing
// spans among the next ReadAheadBytes (of compressed data) from span id on,
// one request per run; nothing waits for it.
func (m *Manager) readAhead(id int) {
	if m.o.ReadAheadBytes < 0 || id >= m.n || m.profiled.Load() {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	var runs []run
	runStart := -1
	size := int64(0)
	end := id
	for ; end < m.n && (end == id || size < m.o.ReadAheadBytes); end++ {
		c0, c1 := m.o.Layout.CompressedRange(end)
		size += c1 - c0
		missing := m.spans[end].job == nil && !m.presentLocked(end)
		switch {
		case missing && runStart < 0:
			runStart = end
		case !missing && runStart >= 0:
			runs = append(runs, run{runStart, end - 1})
			runStart = -1
		}
	}
	if runStart >= 0 {
		runs = append(runs, run{runStart, end - 1})
	}
	if len(runs) > 0 {
		m.startJobLocked(runs, ReadAhead)
	}
}

// run fetches a job's spans (one request), verifies them (a span that does
// not match is fetched once more on its own; a second mismatch makes the
// layer bad), lands them, and commits them to disk.
func (m *Manager) run(j *job) {
	defer m.wg.Done()
	defer close(j.committed)
	last := j.runs[len(j.runs)-1].b
	j.data, j.errs = make([][]byte, last-j.first+1), make([]error, last-j.first+1)
	err := func() (err error) {
		defer recoverTo(&err)
		if err := j.ticket.Wait(m.ctx); err != nil {
			return err
		}
		if p, ok := m.o.Layout.(Preparer); ok {
			var ids []int
			j.ids(func(id int) { ids = append(ids, id) })
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				defer func() { _ = recover() }() // a hint; the inflation reports failures
				p.Prepare(ids)
			}()
		}
		return m.fetchRuns(j)
	}()
	j.ticket.Done()
	if err != nil {
		j.ids(func(id int) { j.errs[id-j.first] = err })
	}
	// Land: fetching -> fetched (bytes kept in memory until committed), or
	// back to missing.
	m.mu.Lock()
	j.ids(func(id int) {
		sp := &m.spans[id]
		if sp.job != j {
			panic(fmt.Sprintf("spans: span %d landed by a job that does not own it", id))
		}
		sp.job = nil
		if j.errs[id-j.first] == nil {
			sp.comp = j.data[id-j.first]
			sp.landed = j
		}
	})
	m.mu.Unlock()
	close(j.done)

	j.ids(func(id int) {
		data := j.data[id-j.first]
		if data == nil {
			return
		}
		if m.bad.Load() == nil {
			if err := m.o.Cache.Put(m.compKey(id), data); err != nil && !errors.Is(err, diskcache.ErrFull) {
				m.o.Log.WithError(err).WithField("span", id).Warn("Could not cache span")
			}
			m.dropIfBad(m.compKey(id))
		}
		m.mu.Lock()
		if sp := &m.spans[id]; sameBytes(sp.comp, data) {
			sp.comp = nil
		}
		if sp := &m.spans[id]; sp.landed == j {
			sp.landed = nil
		}
		m.mu.Unlock()
	})
}

// fetchRuns reads the job's ranges (one request) and verifies each span.
func (m *Manager) fetchRuns(j *job) error {
	ctx := j.ticket.Context()
	ranges := make([]remote.Range, len(j.runs))
	for i, r := range j.runs {
		c0, _ := m.o.Layout.CompressedRange(r.a)
		_, c1 := m.o.Layout.CompressedRange(r.b)
		ranges[i] = remote.Range{Offset: c0, Length: c1 - c0}
	}
	bufs, err := m.readRanges(ctx, ranges)
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, ErrPreempted) {
			return ErrPreempted
		}
		return fmt.Errorf("fetch spans %s: %w", describeRuns(j.runs), err)
	}
	j.ticket.Delivered()
	for i, r := range j.runs {
		c0 := ranges[i].Offset
		for id := r.a; id <= r.b; id++ {
			s, e := m.o.Layout.CompressedRange(id)
			data := bufs[i][s-c0 : e-c0 : e-c0]
			if err := m.o.Layout.Verify(id, data); err != nil {
				data, err = m.refetch(ctx, id)
				if err != nil {
					j.errs[id-j.first] = err
					continue
				}
			}
			j.data[id-j.first] = data
			m.stats.fetchedSpans.Add(1)
		}
	}
	return nil
}

func describeRuns(runs []run) string {
	parts := make([]string, len(runs))
	for i, r := range runs {
		parts[i] = fmt.Sprintf("%d-%d", r.a, r.b)
	}
	return strings.Join(parts, ",")
}

// refetch fetches span id once more on its own after a digest mismatch (a
// transfer problem); a second mismatch means the index or the registry's
// blob is not what the image says.
func (m *Manager) refetch(ctx context.Context, id int) ([]byte, error) {
	// A mirror that served the bad bytes is left out for the refetch.
	for _, src := range m.o.Sources() {
		if r, ok := src.(interface{ RejectLastRead() }); ok {
			r.RejectLastRead()
		}
	}
	s, e := m.o.Layout.CompressedRange(id)
	bufs, err := m.readRanges(ctx, []remote.Range{{Offset: s, Length: e - s}})
	if err != nil {
		return nil, fmt.Errorf("refetch span %d: %w", id, err)
	}
	if err := m.o.Layout.Verify(id, bufs[0]); err != nil {
		reason := fmt.Sprintf("span %d from the registry does not match its digest twice", id)
		m.markBadAsync(reason)
		return nil, fmt.Errorf("%w: %s: %w", ErrLayerBad, reason, err)
	}
	return bufs[0], nil
}

// readRanges asks the layer's sources in turn.
func (m *Manager) readRanges(ctx context.Context, ranges []remote.Range) ([][]byte, error) {
	var errs []error
	for _, src := range m.o.Sources() {
		bufs, err := src.ReadRanges(ctx, ranges)
		if err == nil {
			for _, b := range bufs {
				m.stats.fetchedBytes.Add(int64(len(b)))
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

// recoverTo turns a panic (a hostile index that slipped past its checks)
// into an error, so a flight always lands and the daemon survives.
func recoverTo(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: internal error (panic): %v", ErrLayerBad, r)
	}
}

// sameBytes reports whether a and b are the same slice (not merely equal).
func sameBytes(a, b []byte) bool {
	return len(a) > 0 && len(a) == len(b) && &a[0] == &b[0]
}
