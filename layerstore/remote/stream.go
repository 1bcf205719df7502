package remote

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"

	digest "github.com/opencontainers/go-digest"
)

// Open streams the whole blob. When the stream breaks (connection reset,
// truncated body, no byte for IdleTimeout) it resumes transparently
// with a Range request from the last offset, up to MaxAttempts consecutive
// failures without progress. The content is verified against the digest:
// the last Read returns an error wrapping ErrDigestMismatch instead of
// io.EOF when it does not match. Close the reader when done.
func (b *Blob) Open(ctx context.Context) (io.ReadCloser, error) {
	if !b.digest.Algorithm().Available() {
		return nil, fmt.Errorf("open %s: digest algorithm: %w", b.digest, ErrUnsupported)
	}
	s := &blobStream{b: b, ctx: ctx, h: b.digest.Algorithm().Hash()}
	if err := b.c.retry(ctx, func(int) error { return s.open() }); err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", b.digest, b.repo.Name(), err)
	}
	return s, nil
}

// blobStream is the reader returned by Open. Like any io.Reader it is not
// safe for concurrent use; the watchdog's timer only cancels.
type blobStream struct {
	b   *Blob
	ctx context.Context
	h   hash.Hash
	off int64 // bytes delivered so far

	body     io.ReadCloser // nil between a failure and the next open
	cancel   context.CancelFunc
	wd       *watchdog
	failures int   // consecutive failures without progress
	lastErr  error // the failure that closed the body
	err      error // sticky final result
}

var errStreamClosed = errors.New("blob stream closed")

// open starts a GET from s.off, asking the endpoints in turn.
func (s *blobStream) open() error {
	return s.b.c.onEndpoints(s.ctx, s.b.repo, pullActions, s.b.digest.String(), "blob", s.openOn)
}

func (s *blobStream) openOn(_ context.Context, rc *repoClient) error {
	ctx, cancel := context.WithCancel(s.ctx)
	wd := startWatchdog(rc.firstByte, s.b.c.opts.IdleTimeout, cancel)
	rangeValue := ""
	if s.off > 0 {
		rangeValue = fmt.Sprintf("bytes=%d-", s.off)
	}
	resp, err := s.b.get(ctx, rc, rangeValue)
	if err != nil {
		wd.stop()
		cancel()
		return wd.check(err)
	}
	wd.kick()
	size := s.b.size
	fail := func(err error) error {
		wd.stop()
		_ = resp.Body.Close()
		cancel()
		return wd.check(err)
	}
	var body io.ReadCloser = kickingBody{ReadCloser: countBody(resp.Body, &s.b.c.stats.fullBytes), w: wd}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		first, last, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return fail(err)
		}
		if first != s.off || last != size-1 || (total >= 0 && total != size) {
			return fail(fmt.Errorf("asked for bytes %d- of %d, got Content-Range %q: %w",
				s.off, size, resp.Header.Get("Content-Range"), ErrInvalidResponse))
		}
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != size {
			return fail(fmt.Errorf("body of %d bytes, blob size %d: %w", resp.ContentLength, size, ErrInvalidResponse))
		}
		if s.off > 0 { // ranges ignored: skip what was delivered already
			if _, err := io.CopyN(io.Discard, body, s.off); err != nil {
				return fail(truncated(err))
			}
		}
	default:
		wd.stop()
		cancel()
		return responseError(resp)
	}
	s.body, s.cancel, s.wd = body, cancel, wd
	s.b.setServedBy(rc.ep)
	return nil
}

func (s *blobStream) closeBody() {
	if s.body == nil {
		return
	}
	s.wd.stop()
	_ = s.body.Close()
	s.cancel()
	s.body = nil
}

// Read implements io.Reader.
func (s *blobStream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if s.body == nil {
			if err := s.resume(); err != nil {
				s.err = fmt.Errorf("read %s from offset %d: %w", s.b.digest, s.off, err)
				return 0, s.err
			}
		}
		n, err := s.body.Read(p)
		if n > 0 {
			if s.off+int64(n) > s.b.size {
				s.closeBody()
				s.err = fmt.Errorf("read %s: more than %d bytes: %w", s.b.digest, s.b.size, ErrInvalidResponse)
				return 0, s.err
			}
			s.h.Write(p[:n])
			s.off += int64(n)
			s.failures = 0
		}
		switch {
		case err == nil:
			if n > 0 {
				return n, nil
			}
			continue
		case err == io.EOF && s.off == s.b.size:
			s.closeBody()
			s.err = io.EOF
			if sum := digest.NewDigest(s.b.digest.Algorithm(), s.h); sum != s.b.digest {
				s.err = fmt.Errorf("read %s: content hashes to %s: %w", s.b.digest, sum, ErrDigestMismatch)
			}
			if n > 0 && s.err != io.EOF {
				return n, nil // report the mismatch on the next call
			}
			return n, s.err
		}
		// The stream broke before its end.
		wd := s.wd
		s.closeBody()
		if cerr := s.ctx.Err(); cerr != nil {
			s.err = fmt.Errorf("read %s: %w", s.b.digest, cerr)
			return n, s.err
		}
		s.lastErr = wd.check(truncated(err))
		if n > 0 {
			return n, nil
		}
	}
}

// resume waits (backoff) after a failure and opens the stream at s.off.
func (s *blobStream) resume() error {
	if s.lastErr == nil {
		return errStreamClosed
	}
	c := s.b.c
	if _, ok := c.retryable(s.ctx, s.lastErr); !ok {
		c.stats.errors.Add(1)
		return s.lastErr
	}
	s.failures++
	if s.failures >= c.opts.MaxAttempts {
		c.stats.errors.Add(1)
		return fmt.Errorf("giving up after %d attempts: %w", s.failures, s.lastErr)
	}
	c.stats.retries.Add(1)
	if err := c.opts.Clock.Sleep(s.ctx, c.backoff(s.failures, 0)); err != nil {
		return err
	}
	s.lastErr = nil
	return c.retry(s.ctx, func(int) error { return s.open() })
}

// Close implements io.Closer.
func (s *blobStream) Close() error {
	s.closeBody()
	if s.err == nil {
		s.err = errStreamClosed
	}
	return nil
}
