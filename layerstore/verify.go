package layerstore

import (
	"context"
	"fmt"
	"io"

	"github.com/sirupsen/logrus"

	"github.com/lazypull/lazypull/ztoc"
)

// verifyLayer checks a fully fetched layer as a whole: it streams the
// compressed blob from the span cache (header, then every span without the
// byte adjacent spans share) through ztoc's Verify, which checks the blob's
// digest and size, the DiffID from the image config, every checkpoint and
// window, every span digest and every tar header against the zTOC. A
// mismatch marks the layer bad.
func (s *Store) verifyLayer(ctx context.Context, l *layer) {
	if l.verified.Load() || l.bad.Load() != nil {
		return
	}
	res, err := l.x.Verify(ctx, &layerStream{l: l, ctx: ctx}, ztoc.VerifyOptions{Digest: l.digest, DiffID: l.diffID})
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		s.metrics.verified.WithLabelValues("bad").Inc()
		l.markBad(fmt.Sprintf("whole-layer verification: %v", err))
		return
	}
	l.verified.Store(true)
	s.metrics.verified.WithLabelValues("ok").Inc()
	l.log.WithFields(logrus.Fields{"diff_id": res.DiffID}).Info("Layer verified: digest, DiffID, every checkpoint and window, every tar header match")
}

// layerStream reads the compressed layer in order from its spans (fetched
// if they were evicted meanwhile).
type layerStream struct {
	l    *layer
	ctx  context.Context
	next ztoc.SpanID
	pos  int64 // compressed offset of the next byte to return
	buf  []byte
	hdr  bool
}

func (r *layerStream) Read(p []byte) (int, error) {
	if !r.hdr {
		r.hdr = true
		r.buf = r.l.header
		r.pos = int64(len(r.l.header))
	}
	for len(r.buf) == 0 {
		if int(r.next) >= r.l.x.NumSpans() {
			return 0, io.EOF
		}
		spans, err := r.l.src.fetch(r.ctx, r.next, r.next, false)
		if err != nil {
			return 0, err
		}
		s0, s1 := r.l.x.SpanCompressedRange(r.next)
		if s0 > r.pos || s1 < r.pos {
			return 0, fmt.Errorf("span %d [%d, %d) does not continue the stream at %d", r.next, s0, s1, r.pos)
		}
		r.buf = spans[0][r.pos-s0:]
		r.pos = s1
		r.next++
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
