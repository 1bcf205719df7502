package layerstore

import (
	"context"
	"fmt"
	"io"

	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/spans"
	"github.com/lazypull/lazypull/ztoc"
)

// verifyLayer checks a layer as a whole: it streams the compressed blob
// (header, then every span without the byte adjacent spans share; spans
// not here are fetched in order at Verify priority) through ztoc's Verify,
// which checks the blob's digest and size, the DiffID from the image
// config, every checkpoint (in, out, bits, window) against the real deflate
// stream and every entry against its own tar header. A mismatch marks the
// layer bad. It returns nil once the layer is verified.
func (s *Store) verifyLayer(ctx context.Context, l *layer) error {
	if l.verified.Load() {
		return nil
	}
	if err := l.badErr(); err != nil {
		return err
	}
	stream := &layerStream{l: l, ctx: ctx, batch: int64(s.cfg.Prefetch.BatchSize)}
	res, err := l.x.Verify(ctx, stream, ztoc.VerifyOptions{Digest: l.digest, DiffID: l.diffID})
	if err != nil {
		if ctx.Err() != nil || stream.err != nil {
			return err // not the layer's fault: fetching failed
		}
		reason := fmt.Sprintf("whole-layer verification: %v", err)
		s.markBad(l, reason)
		return fmt.Errorf("%w: %s", ErrLayerBad, reason)
	}
	l.verified.Store(true)
	s.promote(l)
	s.metrics.verified.WithLabelValues("ok").Inc()
	l.log.WithFields(logrus.Fields{"diff_id": res.DiffID}).Info("Layer verified: digest, DiffID, every checkpoint and every tar header match")
	return nil
}

// layerStream reads the compressed layer in order from its spans, fetching
// the missing ones batch by batch at Verify priority.
type layerStream struct {
	l     *layer
	ctx   context.Context
	batch int64 // compressed bytes fetched at once
	next  int
	pos   int64 // compressed offset of the next byte to return
	buf   []byte
	hdr   bool
	// err is set when getting the bytes failed (not the bytes' fault).
	err error
}

func (r *layerStream) Read(p []byte) (int, error) {
	if !r.hdr {
		r.hdr = true
		r.buf = r.l.header
		r.pos = int64(len(r.l.header))
	}
	m := r.l.spans
	for len(r.buf) == 0 {
		if r.next >= m.NumSpans() {
			return 0, io.EOF
		}
		if !m.Present(r.next) {
			// Fetch this span and those after it up to a batch.
			last, size := r.next, spanLen(r.l, r.next)
			for last+1 < m.NumSpans() && !m.Present(last+1) && size+spanLen(r.l, last+1) <= r.batch {
				last++
				size += spanLen(r.l, last)
			}
			if err := m.Fetch(r.ctx, r.next, last, spans.Verify); err != nil {
				r.err = err
				return 0, err
			}
		}
		data, err := m.Compressed(r.ctx, r.next, r.next, spans.Verify)
		if err != nil {
			r.err = err
			return 0, err
		}
		s0, s1 := r.l.x.SpanCompressedRange(ztoc.SpanID(r.next))
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
