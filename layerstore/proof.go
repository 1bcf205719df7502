package layerstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lazypull/lazypull/layerstore/spans"
)

// Bytes of an untrusted zTOC are served from proven checkpoints only.
//
// A span of a gzip layer inflates from its checkpoint: a position in the
// deflate stream (in, bits), the uncompressed offset there (out) and the
// 32 KiB window of output before it. A zTOC from outside may lie about any
// of them, and a span digest only proves the compressed bytes, not what
// they inflate to: an edited window changes every byte a back-reference
// copies from it (tar headers included, so a header check on such bytes
// proves nothing), a checkpoint moved to another bit position may decode to
// other bytes. Neither can be proven locally: DEFLATE does not
// resynchronize, so the decoder state at a block boundary is known only by
// decoding up to it from a known one, and the only known one is the start
// of the stream. The cheapest sound proof is therefore the whole-layer
// verification itself, which decodes the stream in order and compares each
// checkpoint (in, bits, out, window) with the real one as it passes it
// (ztoc.VerifyOptions.OnCheckpoint): once checkpoint k matched, span k
// inflates to exactly the layer's bytes. So a read of span k waits until
// the verification run of its layer has passed checkpoint k; the run is
// shared by every reader and the background filler, and a waiting reader
// raises its fetches to Demand priority. A trusted index (built here, or
// verified in full) and an uncompressed layer (no windows) serve at once.
//
// Cost: reading a file at uncompressed offset X of a layer served from an
// unverified zTOC first fetches and decodes the compressed layer up to X
// (once per layer; later reads before the frontier wait for nothing), so an
// unverified index serves a layer in order, as it streams, rather than in
// any order; see TestUntrustedProofCost.

// verifyRun is one whole-layer verification of a layer, shared by everyone
// who needs it: the filler, a reader waiting for a checkpoint, the host
// reading `blob` of a layer with its own TOC.
type verifyRun struct {
	done chan struct{} // closed once err is set
	err  error
	// prio is the spans.Priority of the run's fetches, Demand up to span
	// demandUntil (what a waiting reader needs).
	prio        atomic.Int32
	demandUntil atomic.Int64
	// batchA, batchB are the spans the run fetches now (-1: none).
	batchA, batchB atomic.Int64
}

func newVerifyRun(p spans.Priority) *verifyRun {
	r := &verifyRun{done: make(chan struct{})}
	r.prio.Store(int32(p))
	r.demandUntil.Store(-1)
	r.batchA.Store(-1)
	return r
}

// raise raises the run's priority to p (never lowers it).
func (r *verifyRun) raise(p spans.Priority) {
	for {
		cur := r.prio.Load()
		if int32(p) <= cur || r.prio.CompareAndSwap(cur, int32(p)) {
			return
		}
	}
}

// need makes the run fetch spans up to id at Demand priority.
func (r *verifyRun) need(id int) {
	for {
		cur := r.demandUntil.Load()
		if int64(id) <= cur || r.demandUntil.CompareAndSwap(cur, int64(id)) {
			return
		}
	}
}

// priority is the priority of the run's fetch of span id on.
func (r *verifyRun) priority(id int) spans.Priority {
	if int64(id) <= r.demandUntil.Load() {
		return spans.Demand
	}
	return spans.Priority(r.prio.Load())
}

// proofState is a layer's verification run and what it has proven.
type proofState struct {
	// needed is set for a layer whose index must be proven before its bytes
	// are served (an untrusted gzip zTOC).
	needed bool
	// proven counts the checkpoints the current or last run has proven.
	proven atomic.Int64

	mu sync.Mutex // guards the fields below
	// run is the verification in progress, or nil.
	run *verifyRun
	// changed is closed (and replaced) when proven grows or a run ends.
	changed chan struct{}
}

// advance records that checkpoints 0..n-1 are proven.
func (p *proofState) advance(n int) {
	if int64(n) <= p.proven.Load() {
		return
	}
	p.proven.Store(int64(n))
	p.mu.Lock()
	p.notifyLocked()
	p.mu.Unlock()
}

func (p *proofState) notifyLocked() {
	if p.changed != nil {
		close(p.changed)
		p.changed = nil
	}
}

// waitChan returns a channel closed at the next change.
func (p *proofState) waitChan() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	return p.changed
}

// startVerify returns l's verification run, starting it at priority p when
// none is going (a run going is raised to p). A run started here belongs
// to the Store (its context, its wait group), not to the caller.
// proveUpTo starts it at Verify priority with spans up to id at Demand.
func (s *Store) startVerify(l *layer, p spans.Priority) *verifyRun {
	ps := &l.proof
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if r := ps.run; r != nil {
		r.raise(p)
		return r
	}
	r := newVerifyRun(p)
	ps.run = r
	end := func(err error) {
		ps.mu.Lock()
		defer ps.mu.Unlock()
		r.err = err
		close(r.done)
		ps.run = nil
		ps.notifyLocked()
	}
	if !s.background(func(ctx context.Context) { end(s.runVerification(ctx, l, r)) }) {
		// The store closes: the caller gets an ended run (end takes the
		// lock we hold, so not from here).
		r.err = errors.New("the store is closing")
		close(r.done)
		ps.run = nil
	}
	return r
}

func (s *Store) proveUpTo(l *layer, id int) *verifyRun {
	r := s.startVerify(l, spans.Verify)
	r.need(id)
	return r
}

// verifyShared verifies l as a whole (see runVerification), joining the
// run in progress if there is one, and waits for it (or ctx).
func (s *Store) verifyShared(ctx context.Context, l *layer, p spans.Priority) error {
	if l.verified.Load() {
		return nil
	}
	r := s.startVerify(l, p)
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// awaitProof returns once the bytes of spans 0..last of l may be served: at
// once for a layer that needs no proof or is verified, else when the
// layer's verification run has proven checkpoint last (it is started if
// need be and fetches up to span last at Demand priority, the batch in
// flight raised too; then on at its own, background, priority).
// It fails when the run fails (a mismatch makes the layer bad: reads fail
// with ErrLayerBad) or ctx ends; nothing unproven is ever returned.
func (l *layer) awaitProof(ctx context.Context, last int) error {
	ps := &l.proof
	if !ps.needed || l.verified.Load() || int64(last) < ps.proven.Load() {
		return nil
	}
	if l.startProof == nil {
		return fmt.Errorf("%w: span %d of an unverified index cannot be proven", ErrLayerBad, last)
	}
	start := time.Now()
	defer func() { l.metrics.proofWait.Observe(time.Since(start).Seconds()) }()
	proven := func() bool { return l.verified.Load() || int64(last) < ps.proven.Load() }
	for {
		ch := ps.waitChan()
		if proven() {
			return nil
		}
		if err := l.badErr(); err != nil {
			return err
		}
		r := l.startProof(last)
		if a := r.batchA.Load(); a >= 0 {
			// The run's batch in flight may have been claimed at a
			// background priority: raise it. Its errors are the run's.
			_ = l.spans.Fetch(ctx, int(a), int(r.batchB.Load()), spans.Demand)
		}
		select {
		case <-ch:
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		// A run that ended without proving the span ends this wait too
		// (the next read starts another): no retry loop on a registry that
		// keeps failing.
		select {
		case <-r.done:
			if !proven() && r.err != nil {
				return fmt.Errorf("prove the checkpoint of span %d of the unverified index: %w", last, r.err)
			}
		default:
		}
	}
}
