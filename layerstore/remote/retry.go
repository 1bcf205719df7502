package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"time"
)

// retry runs op until it succeeds, fails permanently, MaxAttempts attempts
// are spent or ctx is done. Between attempts it sleeps with exponential
// backoff and jitter, or for the Retry-After the server asked for (capped by
// MaxRetryAfter). A failure that exhausted the attempts keeps wrapping the
// last error (ErrTruncated, *Error, ...).
func (c *Client) retry(ctx context.Context, op func(attempt int) error) error {
	for attempt := 1; ; attempt++ {
		err := op(attempt)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			c.stats.errors.Add(1)
			return err
		}
		wait, temporary := c.retryable(ctx, err)
		if !temporary {
			if !errors.Is(err, ErrNotFound) { // absence is an answer, not a failure
				c.stats.errors.Add(1)
			}
			return err
		}
		if attempt >= c.opts.MaxAttempts {
			c.stats.errors.Add(1)
			return fmt.Errorf("giving up after %d attempts: %w", attempt, err)
		}
		c.stats.retries.Add(1)
		if serr := c.opts.Clock.Sleep(ctx, c.backoff(attempt, wait)); serr != nil {
			c.stats.errors.Add(1)
			return fmt.Errorf("%w (while retrying after: %w)", serr, err)
		}
	}
}

// backoff is the delay after the given failed attempt (1-based).
func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, c.opts.MaxRetryAfter)
	}
	d := c.opts.BackoffBase
	for i := 1; i < attempt && d < c.opts.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.opts.BackoffMax)
	// Jitter in [d/2, d].
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// retryable reports whether err is worth another attempt and how long the
// server asked to wait.
func (c *Client) retryable(ctx context.Context, err error) (time.Duration, bool) {
	if errors.As(err, new(permanent)) {
		return 0, false
	}
	var herr *Error
	if errors.As(err, &herr) {
		return herr.RetryAfter, herr.Temporary()
	}
	switch {
	case errors.Is(err, ErrTruncated), errors.Is(err, errStalled):
		return 0, true
	case errors.Is(err, ErrDigestMismatch), errors.Is(err, ErrInvalidResponse),
		errors.Is(err, ErrInvalidRange), errors.Is(err, ErrTooLarge), errors.Is(err, ErrUnsupported):
		return 0, false
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT):
		return 0, true
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		// A per-request timeout, not the caller's deadline.
		return 0, true
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return 0, true
	}
	var operr *net.OpError
	if errors.As(err, &operr) {
		return 0, true
	}
	// HTTP/2 connection loss has no exported error type.
	msg := err.Error()
	for _, s := range []string{"GOAWAY", "client connection lost", "stream error", "connection reset"} {
		if strings.Contains(msg, s) {
			return 0, true
		}
	}
	return 0, false
}
