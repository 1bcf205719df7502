package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/lazypull/lazypull/layerstore/spans"
)

// verifyLayer checks a layer as a whole: it streams the compressed blob
// (prefix, then every span without the byte adjacent spans share; spans
// not here are fetched in order, at Verify priority unless a reader raised
// the run) through the index's VerifyLayer: for a zTOC ztoc's Verify (the
// blob's digest and size, the DiffID, every checkpoint against the real
// deflate stream, every entry against its own tar header); for a layer with
// its own TOC tocindex's (digest, size, DiffID, every tar header against
// the TOC, every chunk's place in the tar stream). A mismatch marks the
// layer bad. It returns nil once the layer is verified. The run is shared
// (proof.go): readers of an unverified zTOC wait for it to pass their
// spans' checkpoints.
func (s *Store) verifyLayer(ctx context.Context, l *layer) error {
	return s.verifyShared(ctx, l, spans.Verify)
}

// runVerification is the body of verification run r of l.
func (s *Store) runVerification(ctx context.Context, l *layer, r *verifyRun) error {
	if l.verified.Load() {
		return nil
	}
	if err := l.badErr(); err != nil {
		return err
	}
	stream := &layerStream{l: l, ctx: ctx, batch: int64(s.cfg.Prefetch.BatchSize), run: r, idle: s.sched.WaitIdle}
	found, err := l.idx.VerifyLayer(ctx, stream, l.digest, l.diffID, l.proof.advance)
	if err != nil {
		if ctx.Err() != nil || stream.err != nil || !errors.Is(err, errVerifyMismatch) {
			return err // not the layer's fault: fetching failed
		}
		reason := fmt.Sprintf("whole-layer verification: %v", err)
		s.markBad(l, reason)
		return fmt.Errorf("%w: %s", ErrLayerBad, reason)
	}
	l.verified.Store(true)
	s.promote(l)
	s.metrics.verified.WithLabelValues("ok").Inc()
	l.log.WithField("format", l.idx.Format()).Info("Layer verified: " + found)
	return nil
}

// layerStream reads the compressed layer in order from its spans, fetching
// the missing ones batch by batch at Verify priority.
type layerStream struct {
	l     *layer
	ctx   context.Context
	batch int64 // compressed bytes fetched at once
	// run gives the priority of each fetch and records the batch in
	// flight (a waiting reader raises both).
	run *verifyRun
	// idle waits until the link is idle (after a background fetch was
	// preempted).
	idle func(context.Context) error
	next int
	pos  int64 // compressed offset of the next byte to return
	buf  []byte
	hdr  bool
	// err is set when getting the bytes failed (not the bytes' fault).
	err error
}

func (r *layerStream) Read(p []byte) (int, error) {
	if !r.hdr {
		r.hdr = true
		r.buf = r.l.idx.Prefix()
		r.pos = int64(len(r.buf))
	}
	m := r.l.spans
	for len(r.buf) == 0 {
		if r.next >= m.NumSpans() {
			return 0, io.EOF
		}
		if !m.Present(r.next) {
			// Fetch this span and those after it up to a batch (some
			// may be on their way already), and start the batch after
			// it, which streams while this one is decoded.
			last := r.batchEnd(r.next)
			if err := r.fetch(r.next, last); err != nil {
				r.err = err
				return 0, err
			}
			r.startAhead(last + 1)
		}
		data, err := m.Compressed(r.ctx, r.next, r.next, r.run.priority(r.next))
		if err != nil {
			r.err = err
			return 0, err
		}
		s0, s1 := r.l.idx.Layout().CompressedRange(r.next)
		if s0 > r.pos || s1 < r.pos {
			return 0, fmt.Errorf("span %d [%d, %d) does not continue the stream at %d", r.next, s0, s1, r.pos)
		}
		r.buf = data[0][r.pos-s0:]
		r.pos = s1
		r.next++
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// batchEnd is the last span of the batch from span a: the spans after a
// that are not here, up to the stream's batch of compressed bytes.
func (r *layerStream) batchEnd(a int) int {
	m := r.l.spans
	last, size := a, spanLen(r.l, a)
	for last+1 < m.NumSpans() && !m.Present(last+1) && size+spanLen(r.l, last+1) <= r.batch {
		last++
		size += spanLen(r.l, last)
	}
	return last
}

// startAhead starts the fetch of the next batch from span a on (the first
// span not here) at the run's priority, without waiting: the layer keeps
// streaming while the decoder works through the batch just fetched. At
// most this one batch is started ahead.
func (r *layerStream) startAhead(a int) {
	m := r.l.spans
	for a < m.NumSpans() && m.Present(a) {
		a++
	}
	if a >= m.NumSpans() {
		return
	}
	// A failure here (the layer went bad, the store closes) is the
	// stream's to meet when it gets there.
	_ = m.Start(a, r.batchEnd(a), r.run.priority(a))
}

// fetch makes spans a..b present at the run's priority; a background fetch
// preempted by a container's read is tried again once the link is idle
// (or at once when a reader raised the run meanwhile).
func (r *layerStream) fetch(a, b int) error {
	r.run.batchB.Store(int64(b))
	r.run.batchA.Store(int64(a))
	defer r.run.batchA.Store(-1)
	for {
		err := r.l.spans.Fetch(r.ctx, a, b, r.run.priority(a))
		if !errors.Is(err, spans.ErrPreempted) {
			return err
		}
		if r.run.priority(a) < spans.ReadAhead {
			if err := r.idle(r.ctx); err != nil {
				return err
			}
		}
	}
}
