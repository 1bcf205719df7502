package spans

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Priority orders fetches on the link: higher first.
type Priority int32

// Priorities, lowest first.
const (
	// Verify is the background fetch of whole-layer verification.
	Verify Priority = iota
	// Prefetch is the background fetch of whole layers.
	Prefetch
	// ReadAhead fetches what a sequential reader will ask for next.
	ReadAhead
	// Demand is a read a container waits for.
	Demand
)

func (p Priority) String() string {
	switch p {
	case Verify:
		return "verify"
	case Prefetch:
		return "prefetch"
	case ReadAhead:
		return "read-ahead"
	case Demand:
		return "demand"
	}
	return "unknown"
}

// background reports whether p only fills idle link time.
func (p Priority) background() bool { return p < ReadAhead }

// ErrPreempted ends a background fetch the Scheduler stopped to let a
// foreground one use the link.
var ErrPreempted = errors.New("spans: background fetch preempted")

// SchedulerOptions size the fetch budget. Zero values take the defaults.
type SchedulerOptions struct {
	// MaxActive is the number of fetches in flight at once, all
	// priorities. Default 16.
	MaxActive int
	// MaxBackground is how many of them may be background (prefetch,
	// verification). Default 4.
	MaxBackground int
	// Bandwidth caps background fetches in bytes per second; 0 means no
	// cap. Default 0.
	Bandwidth int64
	// Burst is the most the bandwidth cap lets through at once. Default
	// 16 MiB.
	Burst int64
	// Quiet is how long after the last foreground fetch started or ended
	// background fetches keep waiting, so a container's next read does not
	// queue behind them. Default 1s.
	Quiet time.Duration
	// BackgroundDelay bounds how long the background fetches in flight may
	// keep the link busy, at the link rate measured from the fetches that
	// completed: a container's read that arrives meanwhile waits at most
	// about that long behind them (their bytes already on the way cannot be
	// called back). Default 250ms.
	BackgroundDelay time.Duration
}

func (o SchedulerOptions) withDefaults() SchedulerOptions {
	if o.MaxActive <= 0 {
		o.MaxActive = 16
	}
	if o.MaxBackground <= 0 {
		o.MaxBackground = 4
	}
	o.MaxBackground = min(o.MaxBackground, o.MaxActive)
	if o.Burst <= 0 {
		o.Burst = 16 << 20
	}
	if o.Quiet <= 0 {
		o.Quiet = time.Second
	}
	if o.BackgroundDelay <= 0 {
		o.BackgroundDelay = 250 * time.Millisecond
	}
	return o
}

// minBackgroundBudget is the least background data the Scheduler lets be in
// flight (one small batch), whatever the measured link rate.
const minBackgroundBudget = 1 << 20

// SchedulerStats are the Scheduler's counters.
type SchedulerStats struct {
	Waiting, Running int
	Granted          [Demand + 1]int64
	Preempted        int64
	// LinkRate is the measured rate of the link in bytes per second (0:
	// not measured yet).
	LinkRate float64
}

// Scheduler grants fetches their turn: foreground fetches (Demand,
// ReadAhead) at once while fewer than MaxActive run, preempting a background
// fetch when the budget is full; background fetches only when no foreground
// fetch runs or waits and none started or ended within Quiet, at most MaxBackground
// at a time and within the bandwidth cap. It decides on every change
// (no polling). Safe for concurrent use.
type Scheduler struct {
	opts    SchedulerOptions
	limiter *rateLimiter // nil: no cap

	mu      sync.Mutex // guards the fields below
	seq     uint64
	waiting []*Ticket
	running map[*Ticket]struct{}
	lastFG  time.Time
	timer   *time.Timer // re-decides when the quiet time ends
	closed  bool
	stats   SchedulerStats

	// The link rate: bytes delivered while at least one fetch ran, over the
	// time that was so (since lastAcct), folded into rate every second of
	// busy time.
	busy     time.Duration
	busyLast time.Time
	bytes    int64
	rate     float64
}

// NewScheduler returns a Scheduler with the given budget.
func NewScheduler(o SchedulerOptions) *Scheduler {
	o = o.withDefaults()
	s := &Scheduler{opts: o, running: make(map[*Ticket]struct{})}
	if o.Bandwidth > 0 {
		s.limiter = newRateLimiter(o.Bandwidth, o.Burst)
	}
	return s
}

// Close stops the Scheduler: waiting tickets fail with context.Canceled.
func (s *Scheduler) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	for _, t := range s.waiting {
		t.err = context.Canceled
		close(t.granted)
	}
	s.waiting = nil
}

// Ticket is one fetch's place in the Scheduler: created waiting, granted
// once, done once.
type Ticket struct {
	s    *Scheduler
	size int64
	seq  uint64
	// prio is read by Wait without the lock; written under s.mu.
	prio    atomic.Int32
	granted chan struct{} // closed when granted (or failed: err)
	err     error         // set before granted is closed, when the ticket failed
	ctx     context.Context
	cancel  context.CancelCauseFunc
	// Guarded by s.mu.
	preempted bool
	done      bool
	delivered bool
}

// Ticket queues a fetch of size bytes at priority p. Its Context derives
// from parent and is canceled with ErrPreempted if the fetch is preempted.
// The caller must call Done exactly once.
func (s *Scheduler) Ticket(parent context.Context, p Priority, size int64) *Ticket {
	ctx, cancel := context.WithCancelCause(parent)
	t := &Ticket{s: s, size: size, granted: make(chan struct{}), ctx: ctx, cancel: cancel}
	t.prio.Store(int32(p))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	t.seq = s.seq
	if s.closed {
		t.err = context.Canceled
		close(t.granted)
		return t
	}
	s.waiting = append(s.waiting, t)
	s.dispatchLocked()
	return t
}

// Priority returns the ticket's current priority.
func (t *Ticket) Priority() Priority { return Priority(t.prio.Load()) }

// Context returns the context the fetch must run with.
func (t *Ticket) Context() context.Context { return t.ctx }

// Raise lifts the ticket to priority p (a more urgent client waits for the
// same fetch). A running background fetch raised to the foreground is no
// longer preempted.
func (t *Ticket) Raise(p Priority) {
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if Priority(t.prio.Load()) >= p || t.done {
		return
	}
	t.prio.Store(int32(p))
	if _, running := s.running[t]; running && !p.background() {
		s.lastFG = time.Now()
	}
	s.dispatchLocked()
}

// Wait blocks until the fetch may start (and, for background fetches, the
// bandwidth cap lets its bytes through), or ctx ends.
func (t *Ticket) Wait(ctx context.Context) error {
	select {
	case <-t.granted:
	case <-ctx.Done():
		return ctx.Err()
	case <-t.ctx.Done():
		return context.Cause(t.ctx)
	}
	if t.err != nil {
		return t.err
	}
	if lim := t.s.limiter; lim != nil && t.Priority().background() {
		if err := lim.wait(t.ctx, t.size); err != nil {
			return context.Cause(t.ctx)
		}
	}
	return nil
}

// Delivered tells the Scheduler that the fetch transferred its bytes (for
// the link rate); call it before Done.
func (t *Ticket) Delivered() {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	t.delivered = true
}

// Done ends the ticket: it gives its slot back, or leaves the queue.
func (t *Ticket) Done() {
	s := t.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.done {
		return
	}
	t.done = true
	t.cancel(context.Canceled)
	if _, ok := s.running[t]; ok {
		s.accountLocked(time.Now())
		if t.delivered {
			s.bytes += t.size
			s.foldRateLocked()
		}
		delete(s.running, t)
		if !t.Priority().background() {
			s.lastFG = time.Now()
		}
	} else {
		for i, w := range s.waiting {
			if w == t {
				s.waiting = append(s.waiting[:i], s.waiting[i+1:]...)
				break
			}
		}
	}
	s.dispatchLocked()
}

// WaitIdle blocks until a background fetch would be granted (no
// foreground fetch running or waiting, none within the quiet time, a
// background slot free), or ctx ends.
func (s *Scheduler) WaitIdle(ctx context.Context) error {
	t := s.Ticket(ctx, Verify, 0)
	defer t.Done()
	return t.Wait(ctx)
}

// Touch counts as foreground activity now (e.g. a pull under way): background
// fetches wait for the quiet time again.
func (s *Scheduler) Touch() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastFG = time.Now()
	s.dispatchLocked()
}

// Stats returns a snapshot of the counters.
func (s *Scheduler) Stats() SchedulerStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Waiting, st.Running = len(s.waiting), len(s.running)
	st.LinkRate = s.rate
	return st
}

// accountLocked adds the time since the last change to the busy time when
// fetches were running.
func (s *Scheduler) accountLocked(now time.Time) {
	if len(s.running) > 0 && !s.busyLast.IsZero() {
		s.busy += now.Sub(s.busyLast)
	}
	s.busyLast = now
}

// foldRateLocked folds the bytes delivered over the busy time into the
// link rate once there is a fifth of a second of it.
func (s *Scheduler) foldRateLocked() {
	if s.busy < 200*time.Millisecond {
		return
	}
	sample := float64(s.bytes) / s.busy.Seconds()
	if s.rate == 0 {
		s.rate = sample
	} else {
		s.rate = 0.7*s.rate + 0.3*sample
	}
	s.busy, s.bytes = 0, 0
}

// BackgroundBudget is how much background data may be in flight at once:
// what the measured link carries in BackgroundDelay, at least 1 MiB (and
// that while the rate is not measured yet), at most max.
func (s *Scheduler) BackgroundBudget(max int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backgroundBudgetLocked(max)
}

func (s *Scheduler) backgroundBudgetLocked(max int64) int64 {
	b := int64(s.rate * s.opts.BackgroundDelay.Seconds())
	return min(max, maxInt64(b, minBackgroundBudget))
}

func maxInt64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// dispatchLocked grants what may start now, preempts background fetches a
// foreground one needs the slot of, and arms the timer for the end of the
// quiet time.
func (s *Scheduler) dispatchLocked() {
	if s.closed || len(s.waiting) == 0 {
		return
	}
	sort.SliceStable(s.waiting, func(i, j int) bool {
		pi, pj := s.waiting[i].Priority(), s.waiting[j].Priority()
		if pi != pj {
			return pi > pj
		}
		return s.waiting[i].seq < s.waiting[j].seq
	})
	active, bgActive, fgActive := 0, 0, 0
	var bgBytes int64
	for t := range s.running {
		if t.preempted {
			continue // on its way out
		}
		active++
		if t.Priority().background() {
			bgActive++
			bgBytes += t.size
		} else {
			fgActive++
		}
	}
	budget := s.backgroundBudgetLocked(1 << 62)
	now := time.Now()
	s.accountLocked(now)
	fgWaiting := false
	kept := s.waiting[:0]
	for _, t := range s.waiting {
		p := t.Priority()
		grant := false
		switch {
		case !p.background():
			if active >= s.opts.MaxActive && s.preemptOneLocked() {
				active--
				bgActive--
			}
			grant = active < s.opts.MaxActive
			if grant {
				fgActive++
				s.lastFG = now
			} else {
				fgWaiting = true
			}
		case fgActive > 0 || fgWaiting:
			// A foreground fetch runs or waits: the link is not idle.
		case now.Sub(s.lastFG) < s.opts.Quiet:
			s.armLocked(s.lastFG.Add(s.opts.Quiet).Sub(now))
		default:
			// Within the background slots, and within the data the link
			// carries in BackgroundDelay (one fetch always may).
			grant = bgActive < s.opts.MaxBackground && active < s.opts.MaxActive &&
				(bgActive == 0 || bgBytes+t.size <= budget)
			if grant {
				bgActive++
				bgBytes += t.size
			}
		}
		if !grant {
			kept = append(kept, t)
			continue
		}
		active++
		s.running[t] = struct{}{}
		s.stats.Granted[p]++
		close(t.granted)
	}
	for i := len(kept); i < len(s.waiting); i++ {
		s.waiting[i] = nil
	}
	s.waiting = kept
}

// preemptOneLocked cancels the running background fetch of lowest priority
// (the newest among equals); it reports whether there was one.
func (s *Scheduler) preemptOneLocked() bool {
	var victim *Ticket
	for t := range s.running {
		if t.preempted || !t.Priority().background() {
			continue
		}
		if victim == nil || t.Priority() < victim.Priority() || t.Priority() == victim.Priority() && t.seq > victim.seq {
			victim = t
		}
	}
	if victim == nil {
		return false
	}
	victim.preempted = true
	victim.cancel(ErrPreempted)
	s.stats.Preempted++
	return true
}

// armLocked makes the Scheduler decide again after d.
func (s *Scheduler) armLocked(d time.Duration) {
	if s.timer == nil {
		s.timer = time.AfterFunc(d, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.dispatchLocked()
		})
		return
	}
	s.timer.Reset(d)
}
