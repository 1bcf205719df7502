package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/layerstore/spans"
	"github.com/lazypull/lazypull/ztoc"
)

// verifyLayer checks a layer as a whole: it streams the compressed blob
// (header, then every span without the byte adjacent spans share; spans
// not here are fetched in order at Verify priority) through the zTOC
// builder and compares the blob's digest and size, the DiffID from the
// image config, and every tar header against the zTOC. A mismatch marks
// the layer bad. It returns nil once the layer is verified.
func (s *Store) verifyLayer(ctx context.Context, l *layer) error {
	if l.verified.Load() {
		return nil
	}
	if err := l.badErr(); err != nil {
		return err
	}
	res, err := ztoc.Build(ctx, &layerStream{l: l, ctx: ctx, batch: int64(s.cfg.Prefetch.BatchSize)}, ztoc.BuildOptions{SpanSize: 1 << 62})
	if err != nil {
		if ctx.Err() != nil || isFetchError(err) {
			return err
		}
		reason := fmt.Sprintf("whole-layer verification: %v", err)
		s.markBad(l, reason)
		return fmt.Errorf("%w: %s", ErrLayerBad, reason)
	}
	var problem string
	switch {
	case res.Digest != l.digest:
		problem = fmt.Sprintf("blob digest is %s", res.Digest)
	case res.Size != l.size:
		problem = fmt.Sprintf("blob has %d bytes, want %d", res.Size, l.size)
	case l.diffID != "" && res.DiffID != l.diffID:
		problem = fmt.Sprintf("DiffID is %s, the image config says %s", res.DiffID, l.diffID)
	default:
		if err := ztoc.CompareTOC(l.x.Entries(), res.Ztoc.TOC.FileMetadata); err != nil {
			problem = fmt.Sprintf("the zTOC does not describe the layer: %v", err)
		}
	}
	if problem != "" {
		s.markBad(l, problem)
		return fmt.Errorf("%w: %s", ErrLayerBad, problem)
	}
	l.verified.Store(true)
	s.metrics.verified.WithLabelValues("ok").Inc()
	l.log.WithFields(logrus.Fields{"diff_id": res.DiffID}).Info("Layer verified: digest, DiffID and every tar header match")
	return nil
}

// fetchError marks errors of getting the bytes (not of the bytes
// themselves) while streaming a layer for verification.
type fetchError struct{ err error }

func (e fetchError) Error() string { return e.err.Error() }
func (e fetchError) Unwrap() error { return e.err }

func isFetchError(err error) bool {
	var fe fetchError
	return errors.As(err, &fe)
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
				return 0, fetchError{err}
			}
		}
		data, err := m.Compressed(r.ctx, r.next, r.next, spans.Verify)
		if err != nil {
			return 0, fetchError{err}
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
