package spans

import (
	"context"
	"sync"
	"time"
)

// rateLimiter is a token bucket in bytes.
type rateLimiter struct {
	rate, burst int64

	mu     sync.Mutex // guards tokens and last
	tokens float64
	last   time.Time
}

func newRateLimiter(rate, burst int64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: burst, tokens: float64(burst), last: time.Now()}
}

// wait blocks until n bytes may be sent, or ctx ends.
func (r *rateLimiter) wait(ctx context.Context, n int64) error {
	r.mu.Lock()
	now := time.Now()
	r.tokens = min(float64(r.burst), r.tokens+now.Sub(r.last).Seconds()*float64(r.rate))
	r.last = now
	r.tokens -= float64(n)
	deficit := -r.tokens
	r.mu.Unlock()
	if deficit <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(deficit / float64(r.rate) * float64(time.Second)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
