package remote

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"
)

// errStalled: no byte arrived for Options.IdleTimeout; retried.
var errStalled = errors.New("connection stalled")

// watchdog cancels a request when it makes no progress: no answer within
// its first period, or no byte for d after that. Blob reads have no total
// timeout (a large read on a slow link may legitimately take long) but must
// not hang on a dead connection.
type watchdog struct {
	d     time.Duration
	t     *time.Timer
	fired atomic.Bool
}

// startWatchdog arms a watchdog that calls cancel when first passes before
// the first kick, or d between later kicks.
func startWatchdog(first, d time.Duration, cancel context.CancelFunc) *watchdog {
	w := &watchdog{d: d}
	w.t = time.AfterFunc(first, func() {
		w.fired.Store(true)
		cancel()
	})
	return w
}

func (w *watchdog) kick() { w.t.Reset(w.d) }

func (w *watchdog) stop() { w.t.Stop() }

// check wraps err with errStalled when the watchdog fired.
func (w *watchdog) check(err error) error {
	if err != nil && w.fired.Load() {
		return errors.Join(errStalled, err)
	}
	return err
}

// kickingBody kicks the watchdog on every read that returns data.
type kickingBody struct {
	io.ReadCloser
	w *watchdog
}

func (k kickingBody) Read(p []byte) (int, error) {
	n, err := k.ReadCloser.Read(p)
	if n > 0 {
		k.w.kick()
	}
	return n, err
}

// awaitHeaders runs send, a request whose context is canceled by cancel,
// and cancels it when no answer came within first (the body is then bounded
// by the caller's deadline). A timeout is reported as errStalled (retried).
func awaitHeaders[T any](first time.Duration, cancel context.CancelFunc, send func() (T, error)) (T, error) {
	w := startWatchdog(first, first, cancel)
	v, err := send()
	w.stop()
	return v, w.check(err)
}
