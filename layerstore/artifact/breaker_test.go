package artifact

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
)

// stuckBackend stands for a shared repository that does not answer (or
// answers not found): a fake, because a real registry cannot be made to
// hang or recover on demand. Calls are counted.
type stuckBackend struct {
	calls    atomic.Int32
	hang     atomic.Bool
	notFound atomic.Bool
}

func (b *stuckBackend) do(ctx context.Context) error {
	b.calls.Add(1)
	if b.hang.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	if b.notFound.Load() {
		return ErrNotFound
	}
	return nil
}

func (b *stuckBackend) ReadBlob(ctx context.Context, d digest.Digest) ([]byte, error) {
	return nil, b.do(ctx)
}
func (b *stuckBackend) WriteBlob(ctx context.Context, d digest.Digest, data []byte) error {
	return b.do(ctx)
}
func (b *stuckBackend) ReadRef(ctx context.Context, kind RefKind, key string) (digest.Digest, error) {
	return "", b.do(ctx)
}
func (b *stuckBackend) WriteRef(ctx context.Context, kind RefKind, key string, target digest.Digest) error {
	return b.do(ctx)
}

func TestBreaker(t *testing.T) {
	b := &stuckBackend{}
	now := time.Unix(1e9, 0)
	c := NewBreaker(b, BreakerOptions{ReadTimeout: 20 * time.Millisecond, Failures: 3, Cooldown: time.Minute, Now: func() time.Time { return now }})
	ctx := context.Background()
	read := func() (time.Duration, error) {
		start := time.Now()
		_, err := c.ReadRef(ctx, LayerRef, "k")
		return time.Since(start), err
	}

	// Not found is an answer: the circuit stays closed.
	b.notFound.Store(true)
	for range 5 {
		if _, err := read(); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ReadRef = %v, want ErrNotFound", err)
		}
	}
	// A hanging backend: each read ends at its deadline; the third opens
	// the circuit.
	b.hang.Store(true)
	for i := range 3 {
		took, err := read()
		if !errors.Is(err, context.DeadlineExceeded) || took > time.Second {
			t.Fatalf("read %d of a hanging backend = %v after %v, want its deadline", i, err, took)
		}
	}
	if !c.Open() {
		t.Fatal("the circuit is closed after 3 failures in a row")
	}
	calls := b.calls.Load()
	for range 10 {
		if took, err := read(); !errors.Is(err, ErrUnavailable) || took > 5*time.Millisecond {
			t.Fatalf("read with the circuit open = %v after %v, want ErrUnavailable at once", err, took)
		}
	}
	if b.calls.Load() != calls {
		t.Errorf("the backend was called %d times while the circuit was open", b.calls.Load()-calls)
	}
	// After the cooldown one trial call goes through; it fails: open again.
	now = now.Add(time.Minute + time.Second)
	if _, err := read(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("trial read = %v, want the backend's failure", err)
	}
	if _, err := read(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("read after a failed trial = %v, want ErrUnavailable", err)
	}
	// The backend recovers: the next trial closes the circuit.
	now = now.Add(time.Minute + time.Second)
	b.hang.Store(false)
	b.notFound.Store(false)
	if _, err := read(); err != nil {
		t.Fatalf("trial read of a recovered backend = %v", err)
	}
	if c.Open() {
		t.Error("the circuit is open after a successful trial")
	}
	// The caller's own cancellation is not the backend's failure.
	b.hang.Store(true)
	for range 5 {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := c.ReadBlob(cctx, digest.FromString("x")); !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled read = %v", err)
		}
	}
	if c.Open() {
		t.Error("callers' cancellations opened the circuit")
	}
}
