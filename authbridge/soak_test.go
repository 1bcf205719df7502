package authbridge

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazypull/lazypull/authbridge/authtest"
)

const (
	// soakDuration is several lifetimes of the soak's tokens.
	soakDuration = 12 * time.Second
	// soakLifetime is the lifetime of the soak's tokens.
	soakLifetime = 2 * time.Second
	// sendSlack is how much of the margin the few statements between the
	// freshness check and tokenRecorder may take on a loaded machine.
	sendSlack = 200 * time.Millisecond
)

// tokenRecorder is the base transport of the soak (a real http.Transport
// inside): for every request carrying a token it records how much validity
// the token had left when the request was handed to the network, and how
// long the exchange took.
type tokenRecorder struct {
	base http.RoundTripper
	key  []byte

	minLeft  atomic.Int64 // nanoseconds; starts at soakLifetime
	slow     atomic.Uint64
	slowest  atomic.Int64
	withAuth atomic.Uint64
}

func newTokenRecorder(key []byte) *tokenRecorder {
	r := &tokenRecorder{base: http.DefaultTransport.(*http.Transport).Clone(), key: key}
	r.minLeft.Store(int64(soakLifetime))
	return r
}

func storeMin(a *atomic.Int64, v int64) {
	for old := a.Load(); v < old && !a.CompareAndSwap(old, v); old = a.Load() {
	}
}

func storeMax(a *atomic.Int64, v int64) {
	for old := a.Load(); v > old && !a.CompareAndSwap(old, v); old = a.Load() {
	}
}

func (r *tokenRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	start := time.Now()
	if ok {
		r.withAuth.Add(1)
		if c, err := authtest.VerifyToken(r.key, tok); err == nil {
			storeMin(&r.minLeft, int64(time.Unix(0, c.Expiry).Sub(start)))
		}
	}
	resp, err := r.base.RoundTrip(req)
	took := time.Since(start)
	storeMax(&r.slowest, int64(took))
	if ok && took > RefreshMargin(soakLifetime)-sendSlack {
		r.slow.Add(1)
	}
	return resp, err
}

// TestSoakShortTokens runs ranged GETs continuously for soakDuration through
// AuthProxy + TokenServer issuing real 2 s tokens, against a plain registry
// and one redirecting blob reads to a storage host, plus a prefetcher-like
// loop calling EnsureFresh before each batch. No request may fail, no
// request may leave with less than the refresh margin (1 s) of validity,
// and none may reach a registry with an expired token, unless a request
// measurably took longer than the margin (a machine overloaded to that
// point cannot keep 2 s tokens fresh; real tokens live 60 s and more).
func TestSoakShortTokens(t *testing.T) {
	type target struct {
		name string
		r    *registry
		rec  *tokenRecorder
		tr   *Transport
	}
	pw := secret("soaker", "s3cr3t-soak")
	e := newUserEnv(t)
	auths := map[string]authEntry{}
	var regs []*registry
	for _, redirect := range []bool{false, true} {
		r := newRegistry(t, registryConfig{lifetime: soakLifetime, redirect: redirect})
		r.ts.AddUser("soaker", pw, map[string][]string{"team/app": {"pull"}})
		auths[r.proxy.Host()] = authEntry{"soaker", pw, ""}
		regs = append(regs, r)
	}
	writeFile(t, filepath.Join(e.configHome, "containers", "auth.json"), authJSON(auths, nil))
	m := newManager(t, e.options())
	var targets []target
	for i, r := range regs {
		rec := newTokenRecorder(r.ts.Key())
		targets = append(targets, target{fmt.Sprintf("redirect=%v", i == 1), r, rec, m.Transport(r.ref(t, "team/app"), []string{"pull"}, rec)})
	}

	ctx, cancel := context.WithTimeout(context.Background(), soakDuration)
	defer cancel()
	var requests, failures atomic.Uint64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	report := func(err error) {
		failures.Add(1)
		select {
		case errs <- err:
		default:
		}
	}
	rangedGET := func(tg target, rng *rand.Rand) {
		n := len(tg.r.data)
		off := rng.IntN(n - 1)
		end := min(n-1, off+rng.IntN(4096))
		requests.Add(1)
		status, body, err := get(context.Background(), tg.tr, tg.r.blobURL("team/app"), fmt.Sprintf("bytes=%d-%d", off, end))
		switch {
		case err != nil:
			report(fmt.Errorf("%s: %w", tg.name, err))
		case status != http.StatusPartialContent || !bytes.Equal(body, tg.r.data[off:end+1]):
			report(fmt.Errorf("%s: bytes=%d-%d: status %d, %d bytes", tg.name, off, end, status, len(body)))
		}
	}
	for i, tg := range targets {
		for w := range 3 { // readers
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(i), uint64(w)))
				for ctx.Err() == nil {
					rangedGET(tg, rng)
				}
			}()
		}
		wg.Add(1)
		go func() { // prefetcher: EnsureFresh, then a batch
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 99))
			for ctx.Err() == nil {
				if err := tg.tr.EnsureFresh(ctx, 1200*time.Millisecond); err != nil && ctx.Err() == nil {
					report(fmt.Errorf("%s: EnsureFresh: %w", tg.name, noteErr(err)))
				}
				for range 8 {
					rangedGET(tg, rng)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if failures.Load() != 0 {
		t.Errorf("%d of %d requests failed", failures.Load(), requests.Load())
	}
	margin := RefreshMargin(soakLifetime)
	for _, tg := range targets {
		ps, ts := tg.r.proxy.Stats(), tg.r.ts.Stats()
		minLeft, slow, slowest := time.Duration(tg.rec.minLeft.Load()), tg.rec.slow.Load(), time.Duration(tg.rec.slowest.Load())
		t.Logf("%s: %d requests with a token, %d tokens issued, least validity left at send %v, slowest exchange %v (%d slower than %v); proxy %+v",
			tg.name, tg.rec.withAuth.Load(), ts.Issued, minLeft, slowest, slow, margin-sendSlack, ps)
		if minLeft < margin-sendSlack {
			t.Errorf("%s: a request left with %v of validity, want at least the margin %v (minus %v slack)", tg.name, minLeft, margin, sendSlack)
		}
		if ps.ExpiredTokens > slow {
			t.Errorf("%s: %d requests reached the registry with an expired token (up to %v late), only %d exchanges were slow enough to explain that",
				tg.name, ps.ExpiredTokens, ps.MaxExpiredBy, slow)
		}
		if ps.InvalidTokens != 0 || ps.StorageAuthViolations != 0 || ps.StorageExpired != 0 {
			t.Errorf("%s: proxy stats %+v, want no invalid tokens and no storage violations", tg.name, ps)
		}
		// Each 2 s token is used for 1 s; EnsureFresh(1.2 s) refreshes at
		// 0.8 s: between soakDuration/1 s and soakDuration/0.5 s tokens.
		if lo, hi := uint64(soakDuration/time.Second)-2, uint64(soakDuration/(500*time.Millisecond))+4; ts.Issued < lo || ts.Issued > hi {
			t.Errorf("%s: tokens issued = %d, want between %d and %d", tg.name, ts.Issued, lo, hi)
		}
	}
	t.Logf("%d ranged GETs in %v", requests.Load(), soakDuration)
}
