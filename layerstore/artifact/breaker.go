package artifact

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// ErrUnavailable is returned, at once, by a Breaker whose backend failed
// several times in a row and is left alone for a while.
var ErrUnavailable = errors.New("artifact: store unavailable (circuit open)")

// BreakerOptions tune a Breaker; zero fields take the defaults.
type BreakerOptions struct {
	// ReadTimeout bounds each ReadBlob and ReadRef (a lookup waits for
	// them). Default 5s.
	ReadTimeout time.Duration
	// Failures is how many failures in a row open the circuit. Default 3.
	Failures int
	// Cooldown is how long an open circuit refuses calls before one is let
	// through to try the backend again. Default 30s.
	Cooldown time.Duration
	// Now is the clock (tests). Default time.Now.
	Now func() time.Time
}

// Breaker is a Backend that fails fast when the one it wraps does not
// answer: reads get a deadline of their own, and after Failures failures
// in a row (anything but ErrNotFound and the caller's own cancellation)
// every call fails with ErrUnavailable until Cooldown has passed; then one
// call tries the backend again (success closes the circuit, failure opens
// it for another Cooldown). It keeps a lookup from waiting on an
// unreachable shared repository: the store falls back to the image's
// registry or to indexing the layer itself.
type Breaker struct {
	b    Backend
	opts BreakerOptions

	mu sync.Mutex // guards the fields below
	// failures counts failures in a row; openUntil is when an open circuit
	// lets a trial call through; trial is set while one is under way.
	failures  int
	openUntil time.Time
	trial     bool
}

var _ Backend = (*Breaker)(nil)

// NewBreaker wraps b.
func NewBreaker(b Backend, opts BreakerOptions) *Breaker {
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 5 * time.Second
	}
	if opts.Failures <= 0 {
		opts.Failures = 3
	}
	if opts.Cooldown <= 0 {
		opts.Cooldown = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Breaker{b: b, opts: opts}
}

// Unwrap returns the wrapped backend.
func (c *Breaker) Unwrap() Backend { return c.b }

// Open reports whether calls fail fast now.
func (c *Breaker) Open() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failures >= c.opts.Failures && (c.opts.Now().Before(c.openUntil) || c.trial)
}

// enter admits a call, or refuses it while the circuit is open. trial is
// set for the one call let through after the cooldown.
func (c *Breaker) enter() (trial bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failures < c.opts.Failures {
		return false, nil
	}
	if c.trial || c.opts.Now().Before(c.openUntil) {
		return false, fmt.Errorf("%w: %d failures in a row, next try after %s", ErrUnavailable, c.failures, c.openUntil.Format(time.RFC3339))
	}
	c.trial = true
	return true, nil
}

// leave records how a call ended.
func (c *Breaker) leave(ctx context.Context, trial bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if trial {
		c.trial = false
	}
	switch {
	case err == nil, errors.Is(err, ErrNotFound):
		c.failures = 0
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The caller gave up (canceled): not the backend's fault.
	default:
		c.failures++
		if c.failures >= c.opts.Failures {
			c.openUntil = c.opts.Now().Add(c.opts.Cooldown)
		}
	}
}

func (c *Breaker) call(ctx context.Context, timeout time.Duration, fn func(ctx context.Context) error) error {
	trial, err := c.enter()
	if err != nil {
		return err
	}
	cctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	err = fn(cctx)
	if err != nil && ctx.Err() == nil && cctx.Err() != nil {
		err = fmt.Errorf("artifact store did not answer within %s: %w", timeout, err)
	}
	c.leave(cctx, trial, err)
	return err
}

// ReadBlob implements Backend.
func (c *Breaker) ReadBlob(ctx context.Context, d digest.Digest) (data []byte, err error) {
	err = c.call(ctx, c.opts.ReadTimeout, func(ctx context.Context) error {
		data, err = c.b.ReadBlob(ctx, d)
		return err
	})
	return data, err
}

// ReadRef implements Backend.
func (c *Breaker) ReadRef(ctx context.Context, kind RefKind, key string) (d digest.Digest, err error) {
	err = c.call(ctx, c.opts.ReadTimeout, func(ctx context.Context) error {
		d, err = c.b.ReadRef(ctx, kind, key)
		return err
	})
	return d, err
}

// WriteBlob implements Backend (no deadline of its own: uploads run in the
// background and may be large).
func (c *Breaker) WriteBlob(ctx context.Context, d digest.Digest, data []byte) error {
	return c.call(ctx, 0, func(ctx context.Context) error { return c.b.WriteBlob(ctx, d, data) })
}

// WriteRef implements Backend.
func (c *Breaker) WriteRef(ctx context.Context, kind RefKind, key string, target digest.Digest) error {
	return c.call(ctx, c.opts.ReadTimeout, func(ctx context.Context) error { return c.b.WriteRef(ctx, kind, key, target) })
}
